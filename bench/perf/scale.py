"""``bench perf scale``: the figures of running past one process, measured in one run.

1. Extraction over ranks: ``bench embed`` of the same dataset with 1 process and with
   ``torchrun --standalone --nproc-per-node 2`` (gloo, loopback, a free port), each into a fresh
   cache: images/s of each and their ratio, and whether the merged embeddings equal the
   single-process ones (same ids, max abs difference).
2. The knn task on a large synthetic catalogue (default 1M x 128, 20k test queries, clustered
   like real embeddings, with style and scene labels): ``index=flat`` against ``index=auto``
   (IVF at this size) in the same run: wall time of each (index build, search and, for IVF,
   its recall check), their ratio, the consistency difference, and IVF's ``index_recall@10``.
3. A sharded search on two ranks (torch.multiprocessing, gloo on loopback) against one
   process on a small catalogue: identical neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.core.registry import REPO_ROOT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--small", action="store_true",
                        help="100k items, 2k queries, a small extraction: seconds, not minutes")
    parser.add_argument("--n", type=int, default=1_000_000, help="catalogue size for knn")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=20_000, help="test-split queries")
    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default: auto's)")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF cells visited")
    parser.add_argument("--dataset", default="homestead",
                        help="what the extraction figure embeds (homestead: the quick world)")
    parser.add_argument("--extractor", default="random:width=32,image_size=64",
                        help="what the extraction figure embeds with")
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--skip", action="append", default=[],
                        choices=["extract", "knn", "sharded"], help="leave a figure out")


# ---------------------------------------------------------------- 1. extraction over ranks


def embed_once(ranks: int, args: argparse.Namespace, cache: Path) -> dict:
    """One ``bench embed`` (plain, or under torchrun with ``ranks`` processes); its summary."""
    summary = cache / "summary.json"
    bench = ["-m", "bench", "embed", "--profile", "quick", "--dataset", args.dataset,
             "--extractors", args.extractor, "--cache", str(cache), "--shard-size",
             str(args.shard_size), "--summary", str(summary), "--no-progress"]
    if ranks == 1:
        command = [sys.executable, *bench]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={ranks}", *bench]
    env = dict(os.environ, BENCH_CACHE_DIR=str(cache))
    if ranks > 1:  # the cores are split between the ranks, as torchrun does by default
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // ranks))
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} ... failed ({done.returncode}):\n"
                           f"{done.stderr[-2000:]}")
    return json.loads(summary.read_text())["extractors"][0]


def extraction_figure(args: argparse.Namespace) -> None:
    from bench.embed.embeddings import Embeddings

    with tempfile.TemporaryDirectory(prefix="bench-perf-scale-") as tmp:
        one = embed_once(1, args, Path(tmp) / "one")
        two = embed_once(2, args, Path(tmp) / "two")
        a, b = Embeddings.load(one["path"]), Embeddings.load(two["path"])
    rates = [s["rows"] / s["embed_s"] for s in (one, two)]
    same_ids = bool(np.array_equal(a.ids, b.ids))
    diff = float(np.abs(a.vectors - b.vectors).max()) if same_ids else float("nan")
    print(f"extraction: bench embed --dataset {args.dataset} --extractors {args.extractor}, "
          f"{one['n']} images, shards of {args.shard_size}, {os.cpu_count()} cores")
    print(f"  1 process            {rates[0]:8.1f} img/s")
    print(f"  torchrun, 2 ranks    {rates[1]:8.1f} img/s  (shards per rank: "
          f"{[len(s) for s in two['shards']]})")
    print(f"  ratio 2 ranks / 1    {rates[1] / rates[0]:8.2f}")
    print(f"  merged == single process: same ids {same_ids}, max abs difference {diff:.3g}")


# ---------------------------------------------------------------- 2. knn on a large catalogue


def synthetic_catalogue(n: int, dim: int, n_queries: int, seed: int = 0):
    """``n`` vectors shaped like a catalogue's embeddings: 2,000 clusters (product kinds) in a
    16-dimensional latent space, mapped into ``dim`` dimensions by a random linear map, plus
    small isotropic noise (low intrinsic dimension, as learned embeddings have); style (12
    values, 20% flipped at random) and scene (8 values) labels follow the clusters;
    ``n_queries`` random rows are the test-split queries."""
    from bench.core.data import Dataset, array_image_source
    from bench.embed.embeddings import Embeddings

    rng = np.random.default_rng(seed)
    n_clusters, latent = 2000, 16
    centres = rng.standard_normal((n_clusters, latent), dtype=np.float32)
    cluster = rng.integers(0, n_clusters, n)
    z = centres[cluster] + 0.3 * rng.standard_normal((n, latent), dtype=np.float32)
    vectors = z @ (rng.standard_normal((latent, dim), dtype=np.float32) / np.sqrt(latent))
    vectors += 0.05 * rng.standard_normal((n, dim), dtype=np.float32)
    style = cluster % 12
    flip = rng.random(n) < 0.2
    style[flip] = rng.integers(0, 12, int(flip.sum()))
    split = np.full(n, "train", dtype=object)
    split[rng.permutation(n)[:n_queries]] = "test"
    ids = np.char.add("v", np.arange(n).astype(str))
    table = pd.DataFrame({"id": ids, "split": split, "style": style.astype(str),
                          "scene": ((cluster // 12) % 8).astype(str)})
    images = np.zeros((n, 1, 1, 3), dtype=np.uint8)
    dataset = Dataset("synthetic", table, array_image_source(images), 1, f"synthetic-{n}-{dim}")
    return dataset, Embeddings(ids, vectors, {"extractor": "synthetic"})


def knn_figure(args: argparse.Namespace) -> None:
    from bench.search import choice as index_choice
    from bench.tasks import TaskContext
    from bench.tasks.knn import KnnConsistency

    dataset, embeddings = synthetic_catalogue(args.n, args.dim, args.queries)
    task = KnnConsistency()
    results, seconds = {}, {}
    auto = {"index": "auto", "nlist": args.nlist, "nprobe": args.nprobe}
    for name, options in (("flat", {"index": "flat"}), ("auto", auto)):
        start = time.perf_counter()
        rows = task.evaluate(embeddings, dataset, TaskContext(options={"k": 10, **options}))
        seconds[name] = time.perf_counter() - start
        results[name] = {row["metric"]: row["value"] for row in rows}
    kind, params = index_choice.task_choice(auto, args.n)
    print(f"knn: {args.n:,} x {args.dim} synthetic vectors, {args.queries:,} test queries, "
          f"k=10; index=auto chose {kind} {params}")
    print(f"  flat (exact)        {seconds['flat']:8.2f} s")
    print(f"  {'auto (' + kind + ')':19s} {seconds['auto']:8.2f} s  (build, search, recall check on "
          f"{min(args.queries, index_choice.RECALL_QUERIES)} queries)")
    print(f"  ratio flat / auto   {seconds['flat'] / seconds['auto']:8.2f}  (target >= 3)")
    for metric in ("style_consistency", "scene_consistency"):
        exact, approx = results["flat"][metric], results["auto"][metric]
        print(f"  {metric:19s} exact {exact:.4f}  auto {approx:.4f}  difference "
              f"{approx - exact:+.4f}  (target within 0.005)")
    recall = results["auto"].get("index_recall@10", float("nan"))
    print(f"  index_recall@10     {recall:8.4f}  (target >= 0.99)")


# ---------------------------------------------------------------- 3. sharded search


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sharded_rank(rank: int, world_size: int, port: int, vectors: np.ndarray,
                 queries: np.ndarray, k: int, out: str) -> None:
    """One rank of a loopback sharded search; rank 0 saves the merged neighbours."""
    import torch.distributed as dist

    from bench.core.distributed import World, leave_group, leave_process
    from bench.search import sharded

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    completed = False
    try:
        indices = sharded.sharded_knn(vectors, k, World(rank, world_size, rank),
                                      queries=queries)
        if rank == 0:
            np.save(out, indices)
        completed = True
    finally:
        leave_group(completed)
    leave_process(0)


def sharded_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int,
                       world_size: int) -> np.ndarray:
    """Neighbours (self excluded) found by ``world_size`` ranks on loopback."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "merged.npy")
        mp.spawn(sharded_rank, args=(world_size, free_port(), vectors, queries, k, out),
                 nprocs=world_size, join=True)
        return np.load(out)


def sharded_figure(args: argparse.Namespace) -> None:
    from bench.search import index as faiss_index

    _, embeddings = synthetic_catalogue(20_000, 64, 1000, seed=1)
    queries = np.arange(0, 20_000, 20)
    start = time.perf_counter()
    merged = sharded_neighbours(embeddings.vectors, queries, 10, 2)
    two_s = time.perf_counter() - start
    single = faiss_index.knn(embeddings.vectors, 10, queries=queries)
    same = float((merged == single).all(axis=1).mean())
    print(f"sharded search: 20,000 x 64, {len(queries)} queries, k=10, 2 ranks (gloo, "
          f"loopback, {two_s:.1f} s with start-up) vs one process")
    print(f"  queries with identical neighbour lists {same:.4f}")


def run(args: argparse.Namespace) -> int:
    if args.small:
        args.n, args.queries = min(args.n, 100_000), min(args.queries, 2000)
    figures = {"extract": extraction_figure, "knn": knn_figure, "sharded": sharded_figure}
    for name, figure in figures.items():
        if name not in args.skip:
            figure(args)
    return 0
