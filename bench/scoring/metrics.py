"""Public metric functions on plain numpy arrays (definitions: docs/metrics.md).

Neighbour-based metrics (``knn_consistency``, ``recall_at_n``, ``map_at_r``) search with FAISS
through :mod:`bench.search.index` (exact ``IndexFlatL2`` by default). The rest are closed-form, vectorised
numpy: no Python loop over queries, groups or samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.search import index as _index


def _labels_1d(labels: Any, name: str, n: int | None = None) -> np.ndarray:
    """A 1-D label array of length ``n`` without missing values (NaN / None)."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name}: expected {n} entries (one per vector), got {arr.shape[0]}")
    if arr.dtype.kind == "f":
        missing = int(np.isnan(arr).sum())
    elif arr.dtype.kind == "O":
        missing = int(sum(v is None or (isinstance(v, float) and v != v) for v in arr))
    else:
        missing = 0
    if missing:
        raise ValueError(f"{name}: {missing} missing values (NaN/None); drop those items first")
    return arr


def _binary(labels: Any, name: str = "labels") -> np.ndarray:
    """A 1-D float64 array of 0/1 values (bool, int or float input)."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected 0/1 values, got dtype {arr.dtype}")
    y = arr.astype(np.float64)
    bad = ~((y == 0) | (y == 1))
    if bad.any():
        raise ValueError(
            f"{name}: expected only 0/1 values, got {int(bad.sum())} others, e.g. {arr[bad][0].tolist()!r}"
        )
    return y


def _finite_1d(values: Any, name: str, n: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) to match labels, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(
            f"{name}: {int(np.isnan(arr).sum())} NaN and {int(np.isinf(arr).sum())} "
            "infinite values"
        )
    return arr


# --------------------------------------------------------------------------- KNN consistency


def knn_consistency(
    vectors: Any,
    labels: Any,
    k: int = 10,
    queries: Any = None,
    metric: str = "l2",
    kind: str = "flat",
    **index_params: Any,
) -> float:
    """Mean over queries of the share of their k nearest neighbours that carry the query's label.

    consistency = 1/|Q| * sum_{q in Q} 1/k * #{j in N_k(q) : label_j == label_q}

    Needs ``vectors`` [n, d] (finite) and ``labels`` [n] (any comparable dtype, no missing
    values). The database is all n vectors; N_k(q) are the k nearest of them excluding q itself
    (exact duplicates of q are kept as neighbours, only q's own row is dropped). ``queries``:
    optional row positions or boolean mask (default: every row). Requires k <= n - 1. Search is
    exact FAISS (``kind="flat"``) unless an IVF/HNSW ``kind`` and its parameters are given; a
    neighbour slot an approximate index leaves empty counts as a mismatch. Compare with
    :func:`knn_chance`.
    """
    return float(knn_agreement(vectors, labels, k, queries=queries, metric=metric, kind=kind,
                               **index_params).mean())


def knn_agreement(
    vectors: Any,
    labels: Any,
    k: int = 10,
    queries: Any = None,
    metric: str = "l2",
    kind: str = "flat",
    **index_params: Any,
) -> np.ndarray:
    """Per query, the share of its k nearest neighbours (self excluded) that carry its label:
    the terms whose mean is :func:`knn_consistency` (float64 [n_queries])."""
    x = _index.as_matrix(vectors, "vectors")
    y = _labels_1d(labels, "labels", x.shape[0])
    pos = _index.query_positions(queries, x.shape[0])
    nbrs = _index.knn(x, k, metric=metric, exclude_self=True, queries=pos, kind=kind,
                      **index_params)
    return neighbour_agreement(nbrs, y, pos)


def neighbour_agreement(neighbours: np.ndarray, labels: Any, queries: Any = None) -> np.ndarray:
    """Per query, the share of its neighbours (row positions [nq, k], -1 for a missing slot,
    which counts as a disagreement) carrying the query's label: :func:`knn_agreement` for
    neighbours found elsewhere (an approximate or a sharded search)."""
    y = _labels_1d(labels, "labels")
    pos = _index.query_positions(queries, y.shape[0])
    query_labels = y if pos is None else y[pos]
    same = (y[neighbours] == query_labels[:, None]) & (neighbours >= 0)
    return same.mean(axis=1)


def knn_chance(labels: Any, queries: Any = None) -> float:
    """Expected KNN consistency of an embedding unrelated to the labels (the chance level).

    chance = sum_c p_c * (n_c - 1) / (n - 1),  p_c = n_c / n

    For a random embedding each neighbour of a query of class c is a uniform draw from the other
    n - 1 items, n_c - 1 of which share its label; p_c is the share of queries in class c. With
    ``queries`` (row positions or mask), p_c is taken over the queried rows while n and n_c stay
    counts over all rows (the database). Needs n >= 2.
    """
    y = _labels_1d(labels, "labels")
    n = y.shape[0]
    if n < 2:
        raise ValueError(f"labels: need at least 2 items, got {n}")
    _, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
    codes = codes.reshape(-1)
    pos = _index.query_positions(queries, n)
    q_codes = codes if pos is None else codes[pos]
    return float(np.mean((counts[q_codes] - 1) / (n - 1)))


# --------------------------------------------------------------------------- retrieval


def _retrieval_inputs(
    query_vectors: Any,
    query_ids: Any,
    gallery_vectors: Any,
    gallery_ids: Any,
    skip_missing: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    q = _index.as_matrix(query_vectors, "query_vectors")
    g = _index.as_matrix(gallery_vectors, "gallery_vectors")
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"query_vectors has {q.shape[1]} columns but gallery_vectors has {g.shape[1]}"
        )
    qid = _labels_1d(query_ids, "query_ids", q.shape[0])
    gid = _labels_1d(gallery_ids, "gallery_ids", g.shape[0])
    present = np.isin(qid, gid)
    if not present.all():
        n_missing = int((~present).sum())
        if not skip_missing:
            raise ValueError(
                f"{n_missing} of {len(qid)} queries have an identity absent from the gallery "
                f"(e.g. {qid[~present][0].tolist()!r}); pass skip_missing=True to leave them out"
            )
        q, qid = q[present], qid[present]
        if len(qid) == 0:
            raise ValueError("no query has its identity in the gallery")
    return q, qid, g, gid


def recall_at_n(
    query_vectors: Any,
    query_ids: Any,
    gallery_vectors: Any,
    gallery_ids: Any,
    ns: tuple[int, ...] = (1, 5, 10, 15, 20),
    metric: str = "l2",
    skip_missing: bool = False,
) -> dict[int, float]:
    """Identity Recall@N: share of queries with at least one same-identity gallery item in the
    top n, for each n in ``ns``.

    recall@n = 1/|Q| * #{q : exists j in top_n(q) with gallery_id_j == query_id_q}

    Needs query vectors [nq, d] with ids [nq] and gallery vectors [ng, d] with ids [ng] (ids of
    any comparable dtype). Queries and gallery are separate sets (no self exclusion). A query whose
    identity is absent from the gallery can never be found: ValueError (count and example), or
    with ``skip_missing=True`` it is left out of the mean. n larger than the gallery means the
    whole gallery. Exact FAISS search.
    """
    ns_list = [int(n) for n in ns]
    hits = recall_hits(query_vectors, query_ids, gallery_vectors, gallery_ids, ns_list, metric,
                       skip_missing)
    return {n: float(hits[:, i].mean()) for i, n in enumerate(ns_list)}


def recall_hits(
    query_vectors: Any,
    query_ids: Any,
    gallery_vectors: Any,
    gallery_ids: Any,
    ns: tuple[int, ...] | list[int] = (1, 5, 10, 15, 20),
    metric: str = "l2",
    skip_missing: bool = False,
    index: Any = None,
) -> np.ndarray:
    """bool [n_queries, len(ns)]: whether each query finds its identity in its top n, the terms
    whose means are :func:`recall_at_n` (queries left out by ``skip_missing`` are not rows).
    ``index``: a FAISS index over the gallery vectors, in order, to search instead of an exact
    one built here (an approximate index's missing slots never match)."""
    ns_list = [int(n) for n in ns]
    if not ns_list or min(ns_list) < 1:
        raise ValueError(f"ns: expected positive integers, got {ns!r}")
    q, qid, g, gid = _retrieval_inputs(
        query_vectors, query_ids, gallery_vectors, gallery_ids, skip_missing
    )
    k = min(max(ns_list), g.shape[0])
    _, idx = _index.search(g if index is None else index, q, k, metric=metric)
    match = (gid[idx] == qid[:, None]) & (idx >= 0)
    first = np.where(match.any(axis=1), match.argmax(axis=1), np.iinfo(np.int64).max)
    return first[:, None] < np.asarray(ns_list)[None, :]


def map_at_r(
    query_vectors: Any,
    query_ids: Any,
    gallery_vectors: Any,
    gallery_ids: Any,
    metric: str = "l2",
    skip_missing: bool = False,
) -> float:
    """MAP@R (Musgrave, Belongie & Lim 2020, "A Metric Learning Reality Check").

    For a query with R relevant gallery items (same identity), rank the gallery and keep the top R:

    AP@R = 1/R * sum_{i=1}^{R} P(i) * rel(i),  P(i) = (#relevant in top i) / i

    MAP@R is the mean of AP@R over queries, as in pytorch-metric-learning's ``mean_average_
    precision_at_r`` with separate query and reference sets. Needs the same inputs as
    :func:`recall_at_n`; queries with no relevant item raise (or are skipped with
    ``skip_missing=True``). Exact FAISS search of max R neighbours.
    """
    return float(average_precision_at_r(query_vectors, query_ids, gallery_vectors, gallery_ids,
                                        metric, skip_missing).mean())


def average_precision_at_r(
    query_vectors: Any,
    query_ids: Any,
    gallery_vectors: Any,
    gallery_ids: Any,
    metric: str = "l2",
    skip_missing: bool = False,
    index: Any = None,
) -> np.ndarray:
    """AP@R of each query (float64 [n_queries]), the terms whose mean is :func:`map_at_r`;
    ``index`` as in :func:`recall_hits`."""
    q, qid, g, gid = _retrieval_inputs(
        query_vectors, query_ids, gallery_vectors, gallery_ids, skip_missing
    )
    uniq, g_counts = np.unique(gid, return_counts=True)
    r = g_counts[np.searchsorted(uniq, qid)]
    _, idx = _index.search(g if index is None else index, q, int(r.max()), metric=metric)
    rel = ((gid[idx] == qid[:, None]) & (idx >= 0)
           & (np.arange(idx.shape[1]) < r[:, None]))
    precision = np.cumsum(rel, axis=1) / np.arange(1, idx.shape[1] + 1)
    return (precision * rel).sum(axis=1) / r


# --------------------------------------------------------------------------- ranking / CTR


def _group_auc(
    y: np.ndarray, s: np.ndarray, codes: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group ROC AUC via the rank-sum (Mann-Whitney U) formula with average ranks for ties.

    Returns (auc [G] (NaN where a group lacks a class), n_pos [G], n [G]).
    """
    order = np.lexsort((s, codes))
    g, ss, yy = codes[order], s[order], y[order]
    m = len(g)
    new_group = np.r_[True, g[1:] != g[:-1]]
    new_block = new_group | np.r_[True, ss[1:] != ss[:-1]]
    block_start = np.flatnonzero(new_block)
    block_end = np.r_[block_start[1:], m] - 1
    block_rank = (block_start + block_end) / 2.0 + 1.0  # average 1-based global rank
    group_offset = np.flatnonzero(new_group)[np.cumsum(new_group) - 1]
    rank = block_rank[np.cumsum(new_block) - 1] - group_offset  # rank within the group
    n = np.bincount(g, minlength=n_groups).astype(np.float64)
    n_pos = np.bincount(g, weights=yy, minlength=n_groups)
    pos_rank_sum = np.bincount(g, weights=rank * yy, minlength=n_groups)
    n_neg = n - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        auc_g = (pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    auc_g[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc_g, n_pos, n


def auc(labels: Any, scores: Any) -> float:
    """ROC AUC: probability that a random positive scores above a random negative, ties = 1/2.

    AUC = (sum of the positives' ranks - P(P+1)/2) / (P * N), ranks 1-based ascending by score
    with tied scores given their average rank (equal to scikit-learn's ``roc_auc_score``).
    Needs 0/1 ``labels`` [n] and finite ``scores`` [n]; raises ValueError if only one class.
    """
    y = _binary(labels)
    s = _finite_1d(scores, "scores", y.shape[0])
    auc_g, n_pos, n = _group_auc(y, s, np.zeros(y.shape[0], dtype=np.int64), 1)
    if np.isnan(auc_g[0]):
        raise ValueError(
            f"labels: AUC needs both classes, got {int(n_pos[0])} positives of {int(n[0])}"
        )
    return float(auc_g[0])


def gauc(labels: Any, scores: Any, groups: Any) -> float:
    """Group AUC (DIN / DICM): impression-weighted mean of per-group AUC.

    GAUC = sum_g n_g * AUC_g / sum_g n_g over groups g (e.g. users) having both classes, n_g the
    group's number of impressions (rows); one-class groups are skipped. Needs 0/1 ``labels``,
    finite ``scores`` and ``groups`` (any comparable dtype), all of length n. Raises ValueError
    if no group has both classes.
    """
    y = _binary(labels)
    s = _finite_1d(scores, "scores", y.shape[0])
    grp = _labels_1d(groups, "groups", y.shape[0])
    _, codes = np.unique(grp, return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    n_groups = int(codes.max()) + 1
    auc_g, _, n = _group_auc(y, s, codes, n_groups)
    valid = ~np.isnan(auc_g)
    if not valid.any():
        raise ValueError(f"gauc: none of the {n_groups} groups has both classes")
    return float(np.sum(n[valid] * auc_g[valid]) / np.sum(n[valid]))


def logloss(labels: Any, probs: Any, eps: float = 1e-7) -> float:
    """Binary cross-entropy: -1/n * sum_i [y_i log p_i + (1 - y_i) log(1 - p_i)].

    Needs 0/1 ``labels`` [n] and probabilities ``probs`` [n] in [0, 1]; p is clipped to
    [eps, 1 - eps] so a confident mistake costs -log(eps) (about 16.1 for 1e-7), not infinity.
    """
    y = _binary(labels)
    p = _finite_1d(probs, "probs", y.shape[0])
    if (p < 0).any() or (p > 1).any():
        raise ValueError(f"probs: expected values in [0, 1], got range [{p.min()}, {p.max()}]")
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


# --------------------------------------------------------------------------- classification


def topk_accuracy(scores: Any, labels: Any, k: int) -> float:
    """Top-k accuracy: share of samples whose true class is among the k highest scores.

    Ties are resolved by expectation over a random order of the tied classes: with G classes
    scoring strictly above the true one and T others tied with it, the sample counts
    clip((k - G) / (T + 1), 0, 1). Without ties this is the usual 0/1 hit (scikit-learn's
    ``top_k_accuracy_score``); with ties it does not depend on class order, and constant scores
    give k / C (chance) rather than 0 or 1. Needs finite ``scores`` [n, C] and integer
    ``labels`` [n] in [0, C); 1 <= k <= C.
    """
    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[0] == 0 or s.dtype.kind not in "biuf":
        raise ValueError(f"scores: expected a numeric 2-D array [n, C], got shape {s.shape}")
    if s.dtype.kind == "f" and not np.isfinite(s).all():
        raise ValueError(f"scores: {int((~np.isfinite(s)).sum())} NaN or infinite values")
    n, c = s.shape
    y = np.asarray(labels)
    if y.shape != (n,) or y.dtype.kind not in "iu":
        raise ValueError(f"labels: expected {n} integer labels, got shape {y.shape} {y.dtype}")
    if y.min() < 0 or y.max() >= c:
        raise ValueError(f"labels: expected values in [0, {c}), got [{y.min()}, {y.max()}]")
    k = int(k)
    if not 1 <= k <= c:
        raise ValueError(f"k must be between 1 and the number of classes ({c}), got {k}")
    return float(topk_hits(s, y, k).mean())


def topk_hits(scores: Any, labels: Any, k: int) -> np.ndarray:
    """Per sample, 1 when the true class is among the k highest scores (ties by expectation,
    see :func:`topk_accuracy`, whose checks this skips): float64 [n]."""
    s, y = np.asarray(scores), np.asarray(labels)
    true = s[np.arange(len(y)), y][:, None]
    above = (s > true).sum(axis=1)
    tied = (s == true).sum(axis=1) - 1
    return np.clip((k - above) / (tied + 1), 0.0, 1.0)
