"""The tasks' index choice and what an approximate index costs.

``choose`` (``index=flat|ivf|ivfpq|hnsw|auto``: exact search below ``AUTO_THRESHOLD`` database
vectors, IVF above) turns a task's options into an index kind and its parameters;
``recall_against_exact`` measures an approximate index's recall of the exact neighbours on a
sample of queries (the ``index_recall@k`` rows: a property of the search, not the embedding).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bench.search.index import KINDS, as_matrix, search

INDEX_OPTIONS = ("index", "nlist", "nprobe", "m", "auto_threshold")


# index=auto: exact below this many database vectors, IVF from it on (a flat search of 10k
# queries over 100k x 128 takes about 3 s on 2 cores; over 1M about 30 s)
AUTO_THRESHOLD = 100_000


# queries whose approximate neighbours are compared with exact search (index_recall@k)
RECALL_QUERIES = 1000


def choose(n: int, index: str = "flat", nlist: int | None = None, nprobe: int | None = None,
           m: int | None = None, auto_threshold: int = AUTO_THRESHOLD) -> tuple[str, dict]:
    """``(kind, params)`` for a task's index options over ``n`` database vectors.

    ``index``: flat | ivf | ivfpq | hnsw | auto (flat below ``auto_threshold`` vectors, IVF
    from it on). ``nlist`` (default :func:`task_nlist`) and ``nprobe`` (default
    ``max(8, nlist // 100)``) apply to IVF kinds; ``m`` is IVFPQ's sub-quantiser count or
    HNSW's ``M`` (defaults: :func:`build_index`'s). On 1M clustered 128-d vectors the
    defaults (nlist 1000, nprobe 10) keep recall@10 above 0.99 (``bench perf scale``)."""
    if index not in (*KINDS, "auto"):
        raise ValueError(f"index must be one of {(*KINDS, 'auto')}, got {index!r}")
    kind = ("flat" if n < int(auto_threshold) else "ivf") if index == "auto" else index
    params: dict[str, int] = {}
    if kind in ("ivf", "ivfpq"):
        params["nlist"] = min(int(nlist), n) if nlist is not None else task_nlist(n)
        params["nprobe"] = min(int(nprobe) if nprobe is not None
                               else max(8, params["nlist"] // 100), params["nlist"])
        if kind == "ivfpq" and m is not None:
            params["m"] = int(m)
    elif kind == "hnsw" and m is not None:
        params["M"] = int(m)
    return kind, params


def task_nlist(n: int) -> int:
    """IVF cells for a task's search: about sqrt(n) (k-means on 50 points per cell stays a few
    seconds at 1M), at least 39 training points per cell."""
    return int(max(1, min(round(math.sqrt(n)), n // 39)))


def task_choice(options: dict[str, Any], n: int) -> tuple[str, dict]:
    """:func:`choose` from a task's options (``index``, ``nlist``, ``nprobe``, ``m``,
    ``auto_threshold``; absent or None: the defaults)."""
    given = {key: options[key] for key in INDEX_OPTIONS if options.get(key) is not None}
    return choose(n, **given)


def recall_against_exact(database: Any, queries: Any, approximate: np.ndarray, k: int,
                         metric: str = "l2", self_ids: Any = None,
                         sample: int = RECALL_QUERIES, seed: int = 0) -> tuple[float, int]:
    """Recall@k of an approximate search against exact (flat) search: for a random sample of
    ``sample`` queries (drawn with ``seed``), the share of each query's exact k nearest
    neighbours found among its approximate k (``approximate`` [nq, >=k], -1 for missing),
    averaged. ``self_ids``: the queries are database rows, excluded from both lists.
    Returns ``(recall, queries sampled)``. Exact ties may swap neighbours: a tie-broken miss
    counts as a miss."""
    x = as_matrix(database, "database")
    q = as_matrix(queries, "queries", dim=x.shape[1])
    nq = q.shape[0]
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(nq, size=min(int(sample), nq), replace=False))
    ids = None if self_ids is None else np.asarray(self_ids)[pick]
    _, exact = search(x, q[pick], k, metric=metric, exclude_self=ids is not None, self_ids=ids)
    found = np.asarray(approximate)[pick, :k]
    hits = ((found[:, :, None] == exact[:, None, :]) & (found[:, :, None] >= 0)).any(axis=2)
    return float(hits.sum(axis=1).mean() / k), len(pick)
