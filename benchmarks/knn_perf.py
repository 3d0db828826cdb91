"""KNN metric performance: bench.scoring.metrics / bench.search.index against bare FAISS and scikit-learn.

Wall and process CPU seconds are both shown (CPU seconds stay meaningful on a busy machine).

Part 1 (exact): n random vectors, ``--queries`` of them as queries, k neighbours. Times, in one
run and interleaved over ``--repeat`` rounds (best of each):

- bare FAISS: ``IndexFlatL2`` construction + ``add`` + ``search`` (k neighbours, no self handling)
- ``bench.scoring.metrics.knn_consistency`` (validation, index, k+1 search, self removal, label compare)
- scikit-learn ``NearestNeighbors(algorithm="brute")`` fit + kneighbors (k+1)

and prints each as a ratio to bare FAISS. Part 2 (IVF): ``--ivf-n`` vectors; builds an
``IndexIVFFlat`` through ``bench.search.index`` (k-means on a training sample), picks the smallest
``nprobe`` (1, 2, 3, 4, 6, 8, 12, ...) whose recall@k against exact search on ``--recall-sample`` queries
reaches ``--target-recall``, then times the search of all queries with it.

    python benchmarks/knn_perf.py                       # 100k x 128, 10k queries; 1M IVF
    python benchmarks/knn_perf.py --n 20000 --queries 2000 --dim 64 --ivf-n 100000   # small
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from sklearn.neighbors import NearestNeighbors

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scoring import metrics as bm  # noqa: E402
from bench.search import index as bi  # noqa: E402


def _timed(fn):
    """(wall seconds, result); the CPU seconds of the call go to ``_timed.cpu``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    _timed.cpu = time.process_time() - cpu
    return time.perf_counter() - wall, out


def make_data(n: int, dim: int, rng: np.random.Generator, kind: str) -> np.ndarray:
    """``gaussian``: isotropic N(0, I), no structure at all (IVF's worst case: every cell is about
    as near as any other). ``powerlaw``: Gaussian whose covariance spectrum decays as i^-1.5 in a
    random rotation, a rough stand-in for real embeddings, whose variance sits in few directions.
    """
    if kind == "gaussian":
        return rng.standard_normal((n, dim), dtype=np.float32)
    scale = (np.arange(1, dim + 1, dtype=np.float32) ** -0.75).astype(np.float32)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x *= scale
    return x @ rotation.astype(np.float32)


def exact_part(args: argparse.Namespace, rng: np.random.Generator) -> None:
    n, nq, dim, k = args.n, args.queries, args.dim, args.k
    x = rng.standard_normal((n, dim), dtype=np.float32)
    labels = rng.integers(0, 20, n)
    pos = np.sort(rng.choice(n, size=nq, replace=False))
    print(f"\n== exact KNN: {n:,} x {dim} float32, {nq:,} queries, k={k}, "
          f"best of {args.repeat}")

    def bare():
        index = faiss.IndexFlatL2(dim)
        index.add(x)
        return index.search(x[pos], k)

    def ours():
        return bm.knn_consistency(x, labels, k=k, queries=pos)

    def sklearn():
        nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(x)
        return nn.kneighbors(x[pos])

    runs = {"bare FAISS IndexFlatL2": bare, "bench.scoring.metrics.knn_consistency": ours}
    if not args.skip_sklearn:
        runs["sklearn NearestNeighbors brute"] = sklearn
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpus: dict[str, list[float]] = {name: [] for name in runs}
    value = None
    for _ in range(args.repeat):
        for name, fn in runs.items():
            t, out = _timed(fn)
            times[name].append(t)
            cpus[name].append(_timed.cpu)
            if fn is ours:
                value = out
    base = min(times["bare FAISS IndexFlatL2"])
    base_cpu = min(cpus["bare FAISS IndexFlatL2"])
    print(f"{'what':32s} {'wall s':>7s} {'ratio':>6s} {'CPU s':>7s} {'ratio':>6s}   wall, rounds")
    for name, ts in times.items():
        rounds = " ".join(f"{t:.2f}" for t in ts)
        cpu = min(cpus[name])
        print(f"{name:32s} {min(ts):7.2f} {min(ts) / base:5.2f}x {cpu:7.2f} "
              f"{cpu / base_cpu:5.2f}x   [{rounds}]")
    print(f"(knn_consistency = {value:.4f}, chance = {bm.knn_chance(labels, queries=pos):.4f})")


def ivf_part(args: argparse.Namespace, rng: np.random.Generator) -> None:
    n, nq, dim, k = args.ivf_n, args.queries, args.dim, args.k
    nlist = min(args.nlist or bi.default_nlist(n), max(1, n // 39))  # >= 39 points per cell
    train_size = min(n, args.train_size or 50 * nlist)
    t_data, x = _timed(lambda: make_data(n + nq, dim, rng, args.ivf_data))
    x, q = x[:n], x[n:]
    print(f"\n== IVF: {n:,} x {dim} ({args.ivf_data}), {nq:,} queries, k={k}, nlist={nlist}, "
          f"k-means on {train_size:,} vectors  (data generated in {t_data:.1f} s)")
    sample = q[: args.recall_sample]
    t_exact, (_, truth) = _timed(lambda: bi.search(x, sample, k))
    print(f"exact search of the {len(sample)}-query recall sample: {t_exact:.2f} s wall, "
          f"{_timed.cpu:.2f} s CPU "
          f"(=> about {t_exact * nq / len(sample):.1f} s for all {nq:,} queries exact)")
    t_build, index = _timed(
        lambda: bi.build_index(x, kind="ivf", nlist=nlist, nprobe=1, train_size=train_size)
    )
    print(f"IVF build (train + add): {t_build:.2f} s wall, {_timed.cpu:.2f} s CPU")

    def recall_at(nprobe: int) -> float:
        index.nprobe = nprobe
        _, got = bi.search(index, sample, k)
        return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, truth)]))

    if args.nprobe:
        chosen = args.nprobe
        print(f"nprobe={chosen}: recall@{k} {recall_at(chosen):.4f} on the sample")
    else:
        chosen = nlist
        steps = [s * 2**e for e in range(20) for s in (2, 3)]  # 2, 3, 4, 6, 8, 12, ...
        for probe in [1] + [s for s in steps if s < nlist] + [nlist]:
            r = recall_at(probe)
            print(f"  nprobe={probe:5d}: recall@{k} {r:.4f}")
            if r >= args.target_recall:
                chosen = probe
                break
    index.nprobe = chosen
    t_search, (_, got) = _timed(lambda: bi.search(index, q, k))
    rec = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got[: len(sample)], truth)]))
    print(f"IVF search of {nq:,} queries, nprobe={chosen}: {t_search:.2f} s wall, "
          f"{_timed.cpu:.2f} s CPU "
          f"(recall@{k} {rec:.4f} on the sample; build + search {t_build + t_search:.2f} s)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="database size, exact part")
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeat", type=int, default=1, help="interleaved rounds (best is shown)")
    p.add_argument("--skip-sklearn", action="store_true")
    p.add_argument("--ivf-n", type=int, default=1_000_000, help="0 skips the IVF part")
    p.add_argument("--ivf-data", choices=("powerlaw", "gaussian"), default="powerlaw")
    p.add_argument("--nlist", type=int, default=1024, help="0: bench.search.index.default_nlist")
    p.add_argument("--nprobe", type=int, default=0, help="default: smallest reaching the target")
    p.add_argument("--train-size", type=int, default=0, help="default: 50 * nlist")
    p.add_argument("--target-recall", type=float, default=0.99)
    p.add_argument("--recall-sample", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    rng = np.random.default_rng(args.seed)
    if args.n:
        exact_part(args, rng)
    if args.ivf_n:
        ivf_part(args, rng)


if __name__ == "__main__":
    main()
