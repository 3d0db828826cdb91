"""FAISS neighbour search: every nearest-neighbour lookup in the suite goes through this module.

Three metrics and three index kinds:

- ``metric="l2"`` (the default, as in the reference study): Euclidean distance. Distances are
  returned as FAISS gives them, i.e. **squared** L2 (same order as L2), smaller is nearer.
- ``metric="ip"``: inner product, larger is nearer; the returned "distances" are similarities.
- ``metric="cosine"``: the vectors are L2-normalised (a zero vector stays zero) and searched by
  inner product; the returned values are cosine similarities, larger is nearer.

- ``kind="flat"`` (the default): exact search, ``IndexFlatL2`` / ``IndexFlatIP``.
- ``kind="ivf"``: ``IndexIVFFlat``; parameters ``nlist`` (number of cells), ``nprobe`` (cells
  visited per query), ``train_size`` (k-means training sample, drawn with ``seed``).
- ``kind="ivfpq"``: ``IndexIVFPQ`` (cells as IVF, vectors compressed by product quantisation
  into ``m`` codes of ``nbits`` bits); parameters as IVF plus ``m`` and ``nbits``.
- ``kind="hnsw"``: ``IndexHNSWFlat``; parameters ``M``, ``efConstruction``, ``efSearch``.

Tasks choose among these with ``bench.search.choice`` (``index=flat|ivf|ivfpq|hnsw|auto``) and
under torchrun search per-rank shards of the database with ``bench.search.sharded``.

Inputs are cast to C-contiguous float32; NaN/Inf and wrong shapes are refused with a ValueError
that names the argument. FAISS's OpenMP thread count is left at its default (all cores).

Ties: among equidistant database vectors the order is whatever FAISS returns (for exact indexes
in practice the lower database position first, but that is not part of FAISS's contract). Self
exclusion therefore never relies on the query being ranked first: see :func:`drop_self`.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import faiss
import numpy as np

METRICS = ("l2", "ip", "cosine")


KINDS = ("flat", "ivf", "ivfpq", "hnsw")


_PARAMS = {
    "flat": set(),
    "ivf": {"nlist", "nprobe", "train_size", "seed"},
    "ivfpq": {"nlist", "nprobe", "train_size", "seed", "m", "nbits"},
    "hnsw": {"M", "efConstruction", "efSearch"},
}

# Indexes built here for metric="cosine" (FAISS objects do not accept new attributes), so that
# search() knows to normalise the queries too.
_COSINE_INDEXES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def as_matrix(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 array of shape [n, d] with n, d >= 1, all finite.

    Raises ValueError naming ``name``, the shape or how many values are NaN / infinite.
    No copy is made when ``x`` already is a contiguous float32 matrix.
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array [n, dim], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one row and one column, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name}: expected {dim} columns to match the index, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        rows = int((~np.isfinite(arr)).any(axis=1).sum())
        raise ValueError(
            f"{name}: {n_nan} NaN and {n_inf} infinite values (after casting to float32) "
            f"in {rows} of {arr.shape[0]} rows, shape {arr.shape}"
        )
    return arr


def normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation into a new float32 array; all-zero rows stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32, copy=False)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def _faiss_metric(metric: str) -> int:
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def default_nlist(n: int) -> int:
    """IVF cell count: about 4 * sqrt(n), kept low enough for >= 39 training points per cell."""
    return int(max(1, min(round(4 * math.sqrt(n)), n // 39)))


def default_pq_m(d: int) -> int:
    """PQ sub-quantisers: the largest divisor of d giving at least 4 dimensions each."""
    return max(m for m in range(1, max(1, d // 4) + 1) if d % m == 0)


def default_pq_nbits(n: int) -> int:
    """Bits per PQ code: 8, fewer when n cannot train 2**nbits centroids (39 points each)."""
    return int(max(1, min(8, math.floor(math.log2(max(2, n / 39))))))


def build_index(
    vectors: Any, metric: str = "l2", kind: str = "flat", **params: Any
) -> faiss.Index:
    """Build a FAISS index over ``vectors`` [n, d] holding all n vectors (ids 0..n-1).

    ``kind="flat"`` (exact, no parameters); ``kind="ivf"`` with ``nlist`` (default
    :func:`default_nlist`), ``nprobe`` (default ``max(1, nlist // 8)``), ``train_size`` (default
    ``min(n, 50 * nlist)``, a random sample drawn with ``seed``, default 0); ``kind="hnsw"`` with
    ``M`` (32), ``efConstruction`` (80), ``efSearch`` (64). Unknown parameters raise ValueError.
    For ``metric="cosine"`` the stored vectors are normalised copies.
    """
    _check_metric(metric)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    unknown = set(params) - _PARAMS[kind]
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {sorted(unknown)} for kind={kind!r}; "
            f"allowed: {sorted(_PARAMS[kind]) or 'none'}"
        )
    x = as_matrix(vectors, "vectors")
    if metric == "cosine":
        x = normalize(x)
    n, d = x.shape
    fm = _faiss_metric(metric)

    if kind == "flat":
        index = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
    elif kind in ("ivf", "ivfpq"):
        nlist = int(params.get("nlist", default_nlist(n)))
        if not 1 <= nlist <= n:
            raise ValueError(f"nlist must be between 1 and the number of vectors ({n}), got {nlist}")
        nprobe = int(params.get("nprobe", max(1, nlist // 8)))
        if not 1 <= nprobe <= nlist:
            raise ValueError(f"nprobe must be between 1 and nlist ({nlist}), got {nprobe}")
        quantizer = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
        least = nlist
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, fm)
        else:
            m = int(params.get("m", default_pq_m(d)))
            if m < 1 or d % m:
                raise ValueError(f"m (PQ sub-quantisers) must divide the dimension {d}, got {m}")
            nbits = int(params.get("nbits", default_pq_nbits(n)))
            if not 1 <= nbits <= 16:
                raise ValueError(f"nbits must be between 1 and 16, got {nbits}")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits, fm)
            least = max(nlist, 2 ** nbits)
        train_size = int(params.get("train_size", min(n, max(50 * least, 39 * 2 ** 8
                                                              if kind == "ivfpq" else 0))))
        if not least <= train_size:
            raise ValueError(f"train_size must be at least {least} (nlist"
                             f"{', 2**nbits' if kind == 'ivfpq' else ''}), got {train_size}")
        index.cp.seed = 1234  # FAISS's default k-means seed, set explicitly: builds are repeatable
        index.cp.spherical = metric == "cosine"  # unit-norm centroids for unit-norm data
        if kind == "ivfpq":
            index.pq.cp.seed = 1234
        if train_size < n:
            rng = np.random.default_rng(params.get("seed", 0))
            sample = x[np.sort(rng.choice(n, size=train_size, replace=False))]
        else:
            sample = x
        index.train(sample)
        index.nprobe = nprobe
    else:  # hnsw
        m = int(params.get("M", 32))
        if m < 2:
            raise ValueError(f"M must be at least 2, got {m}")
        index = faiss.IndexHNSWFlat(d, m, fm)
        index.hnsw.efConstruction = int(params.get("efConstruction", 80))
        index.hnsw.efSearch = int(params.get("efSearch", 64))
    index.add(x)
    if metric == "cosine":
        _COSINE_INDEXES[index] = True
    return index


def index_metric(index: faiss.Index) -> str:
    """The metric an index searches with: ``"cosine"`` if built here for cosine, else l2 / ip."""
    if index in _COSINE_INDEXES:
        return "cosine"
    if index.metric_type == faiss.METRIC_L2:
        return "l2"
    if index.metric_type == faiss.METRIC_INNER_PRODUCT:
        return "ip"
    raise ValueError(f"unsupported FAISS metric_type {index.metric_type}")


def _self_positions(self_ids: Any, n_queries: int, n_database: int) -> np.ndarray:
    if self_ids is None:
        if n_queries != n_database:
            raise ValueError(
                "exclude_self=True needs the queries to be the database rows: got "
                f"{n_queries} queries for {n_database} database vectors; pass self_ids= "
                "(the database position of each query)"
            )
        return np.arange(n_queries, dtype=np.int64)
    pos = np.asarray(self_ids)
    if pos.shape != (n_queries,) or pos.dtype.kind not in "iu":
        raise ValueError(
            f"self_ids: expected {n_queries} integer positions, got shape {pos.shape} "
            f"dtype {pos.dtype}"
        )
    if n_queries and (pos.min() < 0 or pos.max() >= n_database):
        raise ValueError(f"self_ids: positions must lie in [0, {n_database}), got out-of-range")
    return pos.astype(np.int64, copy=False)


def drop_self(
    distances: np.ndarray, indices: np.ndarray, self_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own hit from a k+1 search, leaving k columns.

    In row i the column whose index equals ``self_ids[i]`` is removed, wherever it was ranked
    (exact duplicates of the query may tie with it and come first). If the query itself was not
    returned (more than k duplicates, or an approximate index missed it), the last column is
    removed instead. Vectorised; order of the remaining neighbours is kept.
    """
    n, k1 = indices.shape
    is_self = indices == self_ids[:, None]
    is_self[~is_self.any(axis=1), k1 - 1] = True
    drop = is_self.argmax(axis=1)  # first matching column (ids are unique in a FAISS result)
    keep = np.ones((n, k1), dtype=bool)
    keep[np.arange(n), drop] = False
    return distances[keep].reshape(n, k1 - 1), indices[keep].reshape(n, k1 - 1)


def search(
    index_or_vectors: Any,
    queries: Any,
    k: int,
    metric: str | None = None,
    exclude_self: bool = False,
    self_ids: Any = None,
    kind: str = "flat",
    **params: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Search the k nearest database vectors of each query: ``(distances, indices)``, [nq, k].

    ``index_or_vectors``: a FAISS index, or a database matrix [n, d] (an index of ``kind`` with
    ``params`` is then built for this call). ``metric``: for a matrix, default ``"l2"``; for an
    index, default the index's own metric, and a conflicting value raises ValueError (``"cosine"``
    is accepted for an inner-product index and normalises the queries).

    ``exclude_self=True`` means the queries are database rows: query i is database row
    ``self_ids[i]`` (default i, which needs as many queries as database vectors); k+1 neighbours
    are searched and the self hit is removed by :func:`drop_self`. ``k`` may not exceed the
    number of database vectors (minus one with ``exclude_self``). An approximate index may
    return fewer than k hits for some queries; missing slots have index -1.
    """
    if isinstance(index_or_vectors, faiss.Index):
        index = index_or_vectors
        if params or kind != "flat":
            raise ValueError("kind and index parameters apply only when a matrix is passed")
        built = index_metric(index)
        if metric is None:
            metric = built
        _check_metric(metric)
        compatible = {built} | ({"ip", "cosine"} if built in ("ip", "cosine") else set())
        if metric not in compatible:
            raise ValueError(f"metric={metric!r} does not match the index's metric {built!r}")
    else:
        metric = "l2" if metric is None else metric
        index = build_index(index_or_vectors, metric=metric, kind=kind, **params)
    q = as_matrix(queries, "queries", dim=index.d)
    if metric == "cosine":
        q = normalize(q)
    n_db = index.ntotal
    k = int(k)
    available = n_db - 1 if exclude_self else n_db
    if not 1 <= k <= available:
        raise ValueError(
            f"k must be between 1 and {available} (database of {n_db} vectors"
            f"{', self excluded' if exclude_self else ''}), got {k}"
        )
    if not exclude_self:
        if self_ids is not None:
            raise ValueError("self_ids is only used with exclude_self=True")
        return index.search(q, k)
    pos = _self_positions(self_ids, q.shape[0], n_db)
    distances, indices = index.search(q, k + 1)
    return drop_self(distances, indices, pos)


def query_positions(queries: Any, n: int) -> np.ndarray | None:
    """Normalise a query selection (None, int positions or a boolean mask of length n)."""
    if queries is None:
        return None
    pos = np.asarray(queries)
    if pos.dtype == bool:
        if pos.shape != (n,):
            raise ValueError(f"queries: a boolean mask must have shape ({n},), got {pos.shape}")
        pos = np.flatnonzero(pos)
    elif pos.ndim != 1 or (pos.size and pos.dtype.kind not in "iu"):
        raise ValueError(
            f"queries: expected 1-D integer row positions or a boolean mask, got shape "
            f"{pos.shape} dtype {pos.dtype}"
        )
    if pos.size == 0:
        raise ValueError("queries: empty selection")
    if pos.min() < -n or pos.max() >= n:
        raise ValueError(f"queries: positions must lie in [0, {n}), got [{pos.min()}, {pos.max()}]")
    return np.where(pos < 0, pos + n, pos).astype(np.int64)


def knn(
    vectors: Any,
    k: int,
    metric: str = "l2",
    exclude_self: bool = True,
    queries: Any = None,
    kind: str = "flat",
    **params: Any,
) -> np.ndarray:
    """Indices [nq, k] of the k nearest neighbours within one set of ``vectors`` [n, d].

    ``queries``: optional row positions (int array) or boolean mask selecting which rows are
    queried; default all rows. The database is always all rows. With ``exclude_self`` (default)
    each query's own row is removed from its neighbours, robustly to exact duplicates (see
    :func:`drop_self`). To search with vectors that are not database rows use :func:`search`.
    """
    x = as_matrix(vectors, "vectors")
    pos = query_positions(queries, x.shape[0])
    index = build_index(x, metric=metric, kind=kind, **params)
    q = x if pos is None else x[pos]
    self_ids = (np.arange(x.shape[0]) if pos is None else pos) if exclude_self else None
    _, indices = search(index, q, k, exclude_self=exclude_self, self_ids=self_ids)
    return indices
