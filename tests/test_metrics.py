"""bench.scoring.metrics against independent references: scikit-learn and brute-force numpy loops."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score, top_k_accuracy_score
from sklearn.neighbors import NearestNeighbors

from bench.scoring import metrics as bm


def _rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------ knn consistency / chance


def _consistency_reference(x, y, k, queries, metric="euclidean"):
    nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", metric=metric).fit(x)
    _, idx = nn.kneighbors(x[queries])
    shares = []
    for q, row in zip(queries, idx):
        row = [j for j in row if j != q][:k]
        shares.append(np.mean([y[j] == y[q] for j in row]))
    return float(np.mean(shares))


@pytest.mark.parametrize("k", [1, 5, 10])
def test_knn_consistency_matches_sklearn_brute(k):
    rng = _rng(k)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + 2 * (rng.random(400) < 0.3)  # partly predictable labels
    ref = _consistency_reference(x, y, k, np.arange(400))
    assert bm.knn_consistency(x, y, k=k) == pytest.approx(ref, abs=1e-12)
    assert 0.3 < ref < 0.95  # neither trivial nor saturated


def test_knn_consistency_query_subset_and_cosine():
    rng = _rng(1)
    x = rng.standard_normal((300, 6))
    y = np.array(["a", "b", "c"])[np.argmax(x[:, :3], axis=1)]
    queries = rng.choice(300, size=50, replace=False)
    ref = _consistency_reference(x, y, 7, queries)
    assert bm.knn_consistency(x, y, k=7, queries=queries) == pytest.approx(ref, abs=1e-12)
    ref_cos = _consistency_reference(x, y, 7, queries, metric="cosine")
    got_cos = bm.knn_consistency(x, y, k=7, queries=queries, metric="cosine")
    assert got_cos == pytest.approx(ref_cos, abs=1e-12)


def test_knn_consistency_duplicate_with_other_label_counts_as_neighbour():
    rng = _rng(2)
    base = rng.standard_normal((50, 4)).astype(np.float32) * 100  # pairs far apart
    x = np.concatenate([base, base])
    y = np.r_[np.zeros(50, int), np.ones(50, int)]  # each point's exact twin has the other label
    # k=1: the only neighbour is the twin (distance 0), never the query itself
    assert bm.knn_consistency(x, y, k=1) == 0.0
    y_same = np.r_[np.arange(50), np.arange(50)]
    assert bm.knn_consistency(x, y_same, k=1) == 1.0


def test_knn_chance_formula_and_random_embedding():
    rng = _rng(3)
    y = rng.choice(4, size=3000, p=[0.5, 0.3, 0.15, 0.05])
    n = len(y)
    ref = np.mean([(np.sum(y == y[i]) - 1) / (n - 1) for i in range(n)])  # per-query loop
    assert bm.knn_chance(y) == pytest.approx(ref, rel=1e-12)
    x = rng.standard_normal((n, 16)).astype(np.float32)  # unrelated to the labels
    assert bm.knn_consistency(x, y, k=10) == pytest.approx(ref, abs=0.02)
    q = np.arange(0, n, 7)
    ref_q = np.mean([(np.sum(y == y[i]) - 1) / (n - 1) for i in q])
    assert bm.knn_chance(y, queries=q) == pytest.approx(ref_q, rel=1e-12)


def test_knn_consistency_errors():
    x = _rng().standard_normal((20, 3))
    with pytest.raises(ValueError, match="labels: expected 20"):
        bm.knn_consistency(x, np.zeros(19), k=3)
    with pytest.raises(ValueError, match="labels: 2 missing"):
        bm.knn_consistency(x, np.r_[np.zeros(18), np.nan, np.nan], k=3)
    with pytest.raises(ValueError, match="labels: 1 missing"):
        bm.knn_consistency(x, np.array(["a"] * 19 + [None], dtype=object), k=3)
    x[4, 1] = np.nan
    with pytest.raises(ValueError, match="vectors: 1 NaN"):
        bm.knn_consistency(x, np.zeros(20), k=3)


# ------------------------------------------------------------------ retrieval


def _distances(q, g):
    return ((q[:, None, :].astype(np.float64) - g[None, :, :]) ** 2).sum(-1)


def _retrieval_data(seed=0, nq=80, ng=200, n_ids=40, d=8):
    rng = _rng(seed)
    centres = rng.standard_normal((n_ids, d)) * 1.0
    gid = rng.integers(0, n_ids, ng)
    gid[:n_ids] = np.arange(n_ids)  # every identity present
    g = centres[gid] + rng.standard_normal((ng, d))
    qid = rng.integers(0, n_ids, nq)
    q = centres[qid] + rng.standard_normal((nq, d))
    return q.astype(np.float32), qid, g.astype(np.float32), gid


def test_recall_at_n_matches_brute_force():
    q, qid, g, gid = _retrieval_data()
    ns = (1, 5, 10, 15, 20)
    got = bm.recall_at_n(q, qid, g, gid, ns=ns)
    order = np.argsort(_distances(q, g), axis=1, kind="stable")
    for n in ns:
        ref = np.mean([np.any(gid[order[i, :n]] == qid[i]) for i in range(len(q))])
        assert got[n] == pytest.approx(ref, abs=1e-12)
    assert 0.0 < got[1] < got[20] < 1.0
    assert list(got) == list(ns)


def test_recall_at_n_string_ids_and_large_n():
    q, qid, g, gid = _retrieval_data(seed=1)
    names = np.array([f"p{i}" for i in range(40)])
    got = bm.recall_at_n(q, names[qid], g, names[gid], ns=(1, 10_000))
    assert got[10_000] == 1.0
    assert got[1] == bm.recall_at_n(q, qid, g, gid, ns=(1,))[1]


def test_recall_at_n_missing_identity_raises_or_skips():
    q, qid, g, gid = _retrieval_data(seed=2)
    qid = qid.copy()
    qid[[3, 9]] = 999
    with pytest.raises(ValueError, match=r"2 of 80 queries .*\(e\.g\. 999\)"):
        bm.recall_at_n(q, qid, g, gid)
    keep = qid != 999
    skipped = bm.recall_at_n(q, qid, g, gid, skip_missing=True)
    assert skipped == bm.recall_at_n(q[keep], qid[keep], g, gid)


def _map_at_r_reference(q, qid, g, gid):
    order = np.argsort(_distances(q, g), axis=1, kind="stable")
    aps = []
    for i in range(len(q)):
        r = int(np.sum(gid == qid[i]))
        hits, total = 0, 0.0
        for rank, j in enumerate(order[i, :r], start=1):
            if gid[j] == qid[i]:
                hits += 1
                total += hits / rank
        aps.append(total / r)
    return float(np.mean(aps))


def test_map_at_r_matches_brute_force():
    q, qid, g, gid = _retrieval_data(seed=3)
    ref = _map_at_r_reference(q, qid, g, gid)
    assert bm.map_at_r(q, qid, g, gid) == pytest.approx(ref, abs=1e-12)
    assert 0.05 < ref < 0.95


def test_map_at_r_hand_example():
    # gallery on a line; the query at 0 has R = 3 relevant items (id 1) at ranks 1, 3 and 5
    g = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]], dtype=np.float32)
    gid = np.array([1, 0, 1, 0, 1])
    # top R = 3: relevant at ranks 1 and 3 -> (1/1 + 2/3) / 3
    got = bm.map_at_r(np.zeros((1, 1), np.float32), [1], g, gid)
    assert got == pytest.approx((1 + 2 / 3) / 3)


# ------------------------------------------------------------------ AUC, GAUC, logloss


def _pairwise_auc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


@pytest.mark.parametrize("ties", [False, True])
def test_auc_matches_sklearn_and_pairwise_count(ties):
    rng = _rng(4)
    y = (rng.random(700) < 0.3).astype(int)
    s = rng.random(700) + 0.3 * y
    if ties:
        s = np.round(s, 1)  # many tied scores, across and within classes
    got = bm.auc(y, s)
    assert got == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert got == pytest.approx(_pairwise_auc(y, s), abs=1e-12)


def test_auc_edge_cases():
    assert bm.auc([0, 1], [0.5, 0.5]) == 0.5
    assert bm.auc([True, False, True], [3, 1, 2]) == 1.0
    assert bm.auc([1, 0, 0], [0.1, 0.2, 0.3]) == 0.0
    with pytest.raises(ValueError, match="both classes"):
        bm.auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="0/1"):
        bm.auc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="scores: 1 NaN"):
        bm.auc([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match=r"scores: expected shape \(3,\)"):
        bm.auc([0, 1, 1], [0.1, 0.3])


def test_gauc_matches_per_group_sklearn_loop():
    rng = _rng(5)
    n = 3000
    # 120 busy users plus 60 with 1 to 3 impressions (some of them one-class)
    groups = np.array([f"user{i}" for i in rng.integers(0, 120, n - 120)]
                      + [f"rare{i}" for i in rng.integers(0, 60, 120)])
    y = (rng.random(n) < 0.2).astype(int)
    s = np.round(rng.random(n) + 0.2 * y, 2)  # with ties
    num = den = 0.0
    skipped = 0
    for grp in np.unique(groups):
        m = groups == grp
        if len(np.unique(y[m])) < 2:
            skipped += 1
            continue
        num += m.sum() * roc_auc_score(y[m], s[m])
        den += m.sum()
    assert skipped > 0  # one-class groups exist and are left out
    assert bm.gauc(y, s, groups) == pytest.approx(num / den, abs=1e-12)


def test_gauc_single_group_equals_auc_and_errors():
    rng = _rng(6)
    y = (rng.random(200) < 0.5).astype(int)
    s = rng.random(200)
    assert bm.gauc(y, s, np.zeros(200)) == pytest.approx(bm.auc(y, s), abs=1e-12)
    with pytest.raises(ValueError, match="none of the 2 groups"):
        bm.gauc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1])


def test_logloss_matches_sklearn_and_clips():
    rng = _rng(7)
    y = (rng.random(500) < 0.4).astype(int)
    p = np.clip(rng.random(500), 0.01, 0.99)
    assert bm.logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-10)
    eps = 1e-7
    assert bm.logloss([1, 0], [0.0, 0.0]) == pytest.approx(-(np.log(eps) + np.log1p(-eps)) / 2)
    assert np.isfinite(bm.logloss([0, 1], [1.0, 0.0]))
    with pytest.raises(ValueError, match=r"probs: expected values in \[0, 1\]"):
        bm.logloss([0, 1], [0.5, 1.5])


# ------------------------------------------------------------------ top-k accuracy


@pytest.mark.parametrize("k", [1, 2, 5])
def test_topk_accuracy_matches_sklearn(k):
    rng = _rng(8)
    scores = rng.standard_normal((400, 7))
    labels = rng.integers(0, 7, 400)
    scores[np.arange(400), labels] += 0.8
    ref = top_k_accuracy_score(labels, scores, k=k, labels=np.arange(7))
    assert bm.topk_accuracy(scores, labels, k) == pytest.approx(ref, abs=1e-12)


def test_topk_accuracy_ties_are_expectation_over_random_order():
    rng = _rng(9)
    c = 4
    scores = rng.integers(0, 3, (300, c)).astype(float)  # heavy ties
    labels = rng.integers(0, c, 300)
    for k in (1, 2, 3):
        # sklearn breaks ties by column order; averaging over every column order is exact
        refs = []
        for perm in itertools.permutations(range(c)):
            perm = np.array(perm)
            inverse = np.argsort(perm)
            refs.append(top_k_accuracy_score(inverse[labels], scores[:, perm], k=k,
                                             labels=np.arange(c)))
        assert bm.topk_accuracy(scores, labels, k) == pytest.approx(np.mean(refs), abs=1e-12)
    assert bm.topk_accuracy(np.zeros((10, 5)), np.arange(10) % 5, 2) == pytest.approx(2 / 5)


def test_topk_accuracy_errors():
    s = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 4\)"):
        bm.topk_accuracy(s, [0, 1, 4], 1)
    with pytest.raises(ValueError, match="k must be between 1 and the number of classes"):
        bm.topk_accuracy(s, [0, 1, 2], 5)
    with pytest.raises(ValueError, match="scores: expected a numeric 2-D"):
        bm.topk_accuracy(np.zeros(4), [0], 1)
    s[1, 2] = np.nan
    with pytest.raises(ValueError, match="scores: 1 NaN"):
        bm.topk_accuracy(s, [0, 1, 2], 1)
