"""Search over ranks: each rank indexes its shard of the database, rank 0 merges.

Under torchrun (a joined process group) each rank builds an index of its contiguous shard of
the database (``shard_bounds``), searches it for every query, and rank 0 merges the top-k lists
with FAISS's ``merge_knn_results`` (``sharded_search``; ``sharded_knn`` for a task's vectors).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from bench.search.index import (
    _self_positions,
    as_matrix,
    build_index,
    drop_self,
    query_positions,
    search,
)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows [start, stop) of the database that ``rank`` of ``world_size`` indexes: contiguous,
    sizes differing by at most one."""
    return n * rank // world_size, n * (rank + 1) // world_size


def sharded_search(shard: Any, offset: int, queries: Any, k: int, world: Any,
                   metric: str = "l2", kind: str = "flat", exclude_self: bool = False,
                   self_ids: Any = None, **params: Any) -> tuple[np.ndarray, np.ndarray]:
    """Search the k nearest of each query in a database cut over ranks: this rank indexes
    ``shard`` (database rows ``offset`` .. ``offset + len(shard)``) with ``kind`` and
    ``params``, searches every query, and rank 0 gathers the ranks' top-k lists and merges
    them with FAISS's ``merge_knn_results``; every rank returns the merged ``(distances,
    indices)`` [nq, k] (indices into the whole database). Every rank must call it with the same
    queries. ``exclude_self``: query i is database row ``self_ids[i]``, dropped as in
    :func:`search`. ``world``: a :class:`bench.core.distributed.World`."""
    x = as_matrix(shard, "shard")
    q = as_matrix(queries, "queries", dim=x.shape[1])
    want = int(k) + (1 if exclude_self else 0)
    keep_max = metric != "l2"
    index = build_index(x, metric=metric, kind=kind, **params)
    distances, indices = search(index, q, min(want, index.ntotal))
    if distances.shape[1] < want:  # a shard smaller than k: pad with empty slots
        pad = want - distances.shape[1]
        distances = np.hstack([distances, np.full((len(q), pad), -np.inf if keep_max else np.inf,
                                                  dtype=np.float32)])
        indices = np.hstack([indices, np.full((len(q), pad), -1, dtype=np.int64)])
    indices = np.where(indices >= 0, indices + int(offset), -1)
    merged = None
    parts = world.gather_to_main((distances, indices))
    if world.is_main:
        all_d = np.stack([p[0] for p in parts])
        all_i = np.stack([p[1] for p in parts])
        merged = faiss.merge_knn_results(all_d, all_i, keep_max=keep_max)
    distances, indices = world.broadcast(merged)
    if not exclude_self:
        return distances, indices
    n_total = sum(world.gather(index.ntotal))
    pos = _self_positions(self_ids, q.shape[0], n_total)
    return drop_self(distances, indices, pos)


def sharded_knn(vectors: Any, k: int, world: Any, queries: Any = None, metric: str = "l2",
                kind: str = "flat", **params: Any) -> np.ndarray:
    """:func:`knn` (self excluded) with the database cut over the ranks of ``world``: this rank
    indexes its :func:`shard_bounds` rows, rank 0 merges (:func:`sharded_search`). Every rank
    must call it with the same vectors and queries; every rank gets the merged indices."""
    x = as_matrix(vectors, "vectors")
    pos = query_positions(queries, x.shape[0])
    pos = np.arange(x.shape[0]) if pos is None else pos
    start, stop = shard_bounds(x.shape[0], world.rank, world.size)
    if stop <= start:
        raise ValueError(f"{x.shape[0]} vectors cannot be cut into {world.size} rank shards")
    _, indices = sharded_search(x[start:stop], start, x[pos], k, world, metric=metric, kind=kind,
                                exclude_self=True, self_ids=pos, **params)
    return indices
