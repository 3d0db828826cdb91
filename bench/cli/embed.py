"""``bench embed``: embed a dataset with extractors into the cache ``bench run`` reads, over ranks.

Why: a catalogue of millions of images takes many GPUs to embed. Under
``torchrun --nproc-per-node N -m bench embed --dataset ... --extractors ...`` every rank embeds
every N-th unfinished shard of ``bench.embed.store``'s plan on its own device (cuda:LOCAL_RANK,
else the CPU) and writes its shard files beside the cached embeddings; rank 0 then merges them
by id (every id present exactly once) into the cached ``Embeddings`` at ``embeddings_path``, so
a later ``bench run`` with the same dataset and extractor is a cache hit. Started without
torchrun it is the same code with world size 1. A rank that dies leaves its shards unfinished;
running the command again embeds only those (split over the ranks of the new run).

Training extractors are fitted on rank 0 first (weights cached), then loaded by the others.
The ranks must share the cache folder (one machine, or a shared file system across nodes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

from bench.cli.args import add_source_arguments, run_spec, specs
from bench.core import distributed, registry
from bench.core.cache import Cache, write_json
from bench.core.data import Dataset
from bench.core.distributed import World
from bench.embed.ranks import embed_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser, "comma-separated specs (default: the profile's); the cache "
                                 "folder must be shared by every rank")
    parser.add_argument("--shard-size", type=int, default=None,
                        help="rows per shard (default: $BENCH_SHARD_SIZE or 1024)")
    parser.add_argument("--summary", help="write what was done (per extractor: path, shards "
                        "embedded now per rank, seconds) to this JSON file (rank 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_inputs(args: argparse.Namespace, world: World) -> tuple[Dataset, list[Any], Cache]:
    """The dataset (built by rank 0 first, so a generated one is cached once) and extractors."""
    from bench.run.prepare import build_dataset

    request = {"profile": args.profile, "dataset": args.dataset,
               "extractors": None if args.extractors is None else list(specs(args.extractors)),
               "plugin": args.plugin}
    spec = run_spec(request, "results")
    registry.load_plugins(spec.plugins)
    cache = Cache(args.cache)
    extractors = [registry.build_extractor(text, spec.profile) for text in spec.extractors]
    dataset = build_dataset(spec, cache) if world.is_main else None
    world.barrier()
    if not world.is_main:
        dataset = build_dataset(spec, cache)
    assert dataset is not None
    return dataset, extractors, cache


def main(args: argparse.Namespace) -> int:
    if args.shard_size is not None and args.shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {args.shard_size}")
    with distributed.joined() as world:
        dataset, extractors, cache = build_inputs(args, world)
        summaries = []
        for extractor in extractors:
            with tempfile.TemporaryDirectory(prefix="bench-embed-log-") as log_dir:
                summary = embed_dataset(extractor, dataset, cache, Path(log_dir), world,
                                        args.shard_size, progress=not args.no_progress,
                                        fit_on_hit=False, cut_ok=False).summary
            summaries.append(summary)
            if world.is_main:
                print(describe(summary), flush=True)
        if world.is_main and args.summary:
            write_json(Path(args.summary), {
                "dataset": dataset.name, "n": len(dataset), "world_size": world.size,
                "time": dt.datetime.now().isoformat(timespec="seconds"),
                "extractors": summaries})
    if world.distributed:  # everything is written; skip finalisation (leave_process says why)
        distributed.leave_process(0)
    return 0


def describe(summary: dict[str, Any]) -> str:
    if summary["cached"]:
        return f"{summary['extractor']}: cached, {summary['path']}"
    per_rank = "; ".join(f"rank {r}: {len(s)}" for r, s in enumerate(summary["shards"]))
    rate = summary["rows"] / max(summary["embed_s"], 1e-9)
    return (f"{summary['extractor']}: {summary['n']} ids x {summary.get('dim')} dims, "
            f"{summary['rows']} rows in {sum(map(len, summary['shards']))} of "
            f"{summary['n_shards']} shards embedded now ({per_rank}) in "
            f"{summary['embed_s']:.1f} s ({rate:.1f} img/s), {summary['path']}")

