"""The one embed path: fit, embed shard by shard over the ranks, merge by id, cache.

Why: ``bench run`` (one process: world size 1) and ``bench embed`` (under torchrun: N ranks)
must produce the same cached file from the same code. Every rank takes every N-th unfinished
shard of ``bench.embed.store``'s plan and writes its shard files beside the cached embeddings;
rank 0 merges them by id into the file at ``embeddings_path``. A stopped or failed run leaves
finished shards behind, and the next one embeds only the rest.

Training extractors are fitted on rank 0 first (their weights cached), then loaded by the
others. A training its time safety stop cut short (``fit_cut``) is never cached: one process
embeds it in one go for the run at hand; over ranks it is refused.
"""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.core.cache import Cache, exclusive, read_cached, write_text
from bench.core.data import Dataset
from bench.core.distributed import World
from bench.core.extractor import BackboneExtractor, FitContext
from bench.embed.embeddings import EmbeddingError, Embeddings
from bench.embed.key import embeddings_key, embeddings_meta, embeddings_path
from bench.embed.store import (
    ShardPlan,
    embed_shards,
    merge,
    prepare,
    read_shard,
    shard_folder,
    shard_size_setting,
)

_logger = logging.getLogger(__name__)


def log(world: World, message: str) -> None:
    """A message through stdlib logging, naming the rank under torchrun."""
    _logger.info(f"rank {world.rank}/{world.size}: {message}" if world.distributed else message)


@dataclass
class Embedded:
    """What ``embed_dataset`` did: the embeddings (on rank 0; None on the others), where they
    are cached (None for a cut training's), and per-phase seconds and shard counts."""

    embeddings: Embeddings | None
    path: Path | None
    cached: bool
    timings: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def embed_dataset(extractor: Any, dataset: Dataset, cache: Cache, log_dir: Path,
                  world: World | None = None, shard_size: int | None = None,
                  progress: bool = True, fit_on_hit: bool = True,
                  cut_ok: bool = True) -> Embedded:
    """Every row of ``dataset`` embedded by ``extractor``, from the cache when it is there;
    every rank must call it. ``fit_on_hit``: still fit a backbone extractor on a cache hit
    (a checkpoint load), so tasks fine-tune trained weights, not a fresh initialisation.
    ``cut_ok``: embed a cut training's vectors for this process (never cached) rather than
    refuse them."""
    world = world or World()
    key = embeddings_key(extractor, dataset)
    shard_size = int(shard_size or shard_size_setting())
    same_settings(extractor, world.gather({"embeddings key": key, "--shard-size": shard_size}))
    path = embeddings_path(extractor, dataset, cache, key)
    # one process per cache entry at a time: another run (or a torchrun job) sharing the cache
    # waits here, then finds the entry cached (rank 0 holds it for its ranks)
    held = exclusive(path.with_name(path.name + ".lock"), on_wait=lambda holder: log(
        world, f"{extractor.name}: waiting for {holder or 'another process'} embedding "
               "into the same cache entry")) if world.is_main else nullcontext()
    with held:
        return _embed(extractor, dataset, cache, log_dir, world, key, path, shard_size,
                      progress, fit_on_hit, cut_ok)


def same_settings(extractor: Any, settings: list[dict[str, Any]]) -> None:
    """Refuse, on every rank alike, ranks given different settings (another extractor, data
    or code: another embeddings key; another ``--shard-size``) before any shard is planned."""
    for name in settings[0]:
        values = [s[name] for s in settings]
        if len(set(values)) > 1:
            per_rank = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            raise EmbeddingError(f"{extractor.name}: the ranks were given different {name} "
                                 f"({per_rank}); give every rank the same command, code and "
                                 "files")


def _embed(extractor: Any, dataset: Dataset, cache: Cache, log_dir: Path, world: World,
           key: str, path: Path, shard_size: int, progress: bool, fit_on_hit: bool,
           cut_ok: bool) -> Embedded:
    cached = read_cached(path, Embeddings.load) if world.is_main else None
    summary: dict[str, Any] = {"extractor": extractor.name, "path": str(path),
                               "world_size": world.size, "n": len(dataset)}
    timings: dict[str, float] = {}
    if world.broadcast(cached is not None):
        log(world, f"{extractor.name}: embeddings from cache {path.name}")
        timings["cached"] = 1.0
        if fit_on_hit and isinstance(extractor, BackboneExtractor):
            start = time.perf_counter()
            extractor.fit(dataset, FitContext(cache=cache, seed=0, log_dir=log_dir))
            timings["fit_s"] = time.perf_counter() - start
        keep_train_log(path, log_dir, restore=True)
        if cached is not None:
            cached.meta["cache_file"] = str(path)
            summary["dim"] = cached.dim
        return Embedded(cached, path, True, timings, world.broadcast(summary | {"cached": True}))
    log(world, f"{extractor.name}: fit and embed {len(dataset)} items")
    start = time.perf_counter()
    fit_in_turn(extractor, dataset, cache, world, log_dir)
    timings["fit_s"] = time.perf_counter() - start
    cut = getattr(extractor, "fit_cut", None)
    if cut:
        if world.distributed or not cut_ok:
            raise EmbeddingError(f"{extractor.name}: training was cut short ({cut}); "
                                 "embeddings of a cut training are never cached, so bench "
                                 "embed stops here (raise the time cap, or let bench run "
                                 "embed it)")
        return _embed_cut(extractor, dataset, world, cut, timings, summary)
    start = time.perf_counter()
    embeddings, shards = _embed_shards(extractor, dataset, world, path, key, shard_size,
                                       progress)
    timings["embed_s"] = time.perf_counter() - start
    summary |= shards | {"cached": False, "embed_s": timings["embed_s"]}
    if embeddings is not None:
        keep_train_log(path, log_dir, restore=False)
        embeddings.meta["cache_file"] = str(path)
        summary["dim"] = embeddings.dim
        if embeddings.dim != extractor.dim:
            log(world, f"{extractor.name}: declared dim {extractor.dim} but produced "
                       f"{embeddings.dim}")
    summary = world.broadcast(summary)
    world.barrier()  # nobody leaves before the merged file is there
    return Embedded(embeddings, path, False, timings, summary)


def _embed_cut(extractor: Any, dataset: Dataset, world: World, cut: str,
               timings: dict[str, float], summary: dict[str, Any]) -> Embedded:
    """A cut training's vectors, embedded in one go for this run and never stored."""
    start = time.perf_counter()
    vectors = extractor.embed(dataset, np.arange(len(dataset)))
    embeddings = Embeddings(dataset.ids, vectors, embeddings_meta(extractor, dataset, None))
    timings["embed_s"] = time.perf_counter() - start
    log(world, f"{extractor.name}: embeddings of a cut training are not cached")
    return Embedded(embeddings, None, False, timings,
                    summary | {"cached": False, "dim": embeddings.dim, "cut": cut})


def _embed_shards(extractor: Any, dataset: Dataset, world: World, path: Path, key: str,
                  shard_size: int | None, progress: bool
                  ) -> tuple[Embeddings | None, dict[str, Any]]:
    """This rank's share of the unfinished shards; rank 0 merges, saves and cleans up."""
    plan = ShardPlan.for_dataset(dataset, shard_size)
    folder = shard_folder(path)
    todo = None
    if world.is_main:
        prepare(folder, plan)
        todo = [s for s in range(plan.n_shards) if read_shard(folder, s, plan) is None]
        if world.distributed:
            log(world, f"{extractor.name}: {len(todo)} of {plan.n_shards} shards to embed "
                       f"over {world.size} ranks into {folder}")
    todo = world.broadcast(todo)
    mine = todo[world.rank::world.size]
    world.barrier()
    start = time.perf_counter()
    done = embed_shards(extractor, dataset, folder, plan, mine,
                        progress=progress and world.is_main)
    rows = sum(len(plan.rows(s)) for s in done)
    if world.distributed:
        log(world, f"{extractor.name}: embedded shards {done} ({rows} rows) on "
                   f"{world.device()} in {time.perf_counter() - start:.1f} s")
    world.barrier()
    shards = {"shards": world.gather(done), "rows": sum(world.gather(rows)),
              "n_shards": plan.n_shards}
    if not world.is_main:
        return None, shards
    meta = embeddings_meta(extractor, dataset, key) | (
        {"world_size": world.size} if world.distributed else {})
    embeddings = merge(folder, dataset, plan, meta)
    embeddings.save(path)
    shutil.rmtree(folder, ignore_errors=True)
    if world.distributed:
        log(world, f"{extractor.name}: merged {len(embeddings)} ids x {embeddings.dim} dims "
                   f"into {path}")
    return embeddings, shards


def fit_in_turn(extractor: Any, dataset: Dataset, cache: Cache, world: World,
                log_dir: Path) -> None:
    """Fit on rank 0 first (a training caches its weights), then on the others (a cache hit)."""
    ctx = FitContext(cache=cache, seed=0, log_dir=log_dir, device=str(world.device()))
    if world.is_main:
        extractor.fit(dataset, ctx)
    world.barrier()
    if not world.is_main:
        extractor.fit(dataset, ctx)


def keep_train_log(embeddings_path: Path, log_dir: Path, restore: bool) -> None:
    """Keep the extractor's ``train_log.json`` beside its cached embeddings, and put it back
    into the run folder on a cache hit, so loss curves survive runs that skip training."""
    cached = embeddings_path.with_suffix(".train_log.json")
    current = Path(log_dir) / "train_log.json"
    source, target = (cached, current) if restore else (current, cached)
    if source.is_file() and not (restore and target.is_file()):
        write_text(target, source.read_text(encoding="utf-8"))
