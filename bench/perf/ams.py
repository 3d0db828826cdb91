"""``bench perf ams``: bytes and time per iteration of each AMS mode at the DICM paper's regime
(D = 4096 raw floats per image, a 4096-256-64-12 compression sub-model), 2 servers, 2 workers.

Each mode runs in its own launch (fresh processes), so the memory per role is that mode's own.
Data: the CTR harness's synthetic log, its item vectors lifted to D (no dataset or extractor to
build); the byte counts depend only on D, the batch and the log, not on the vectors' values.
Target (docs/ams.md): image bytes per iteration of ``ams`` at least 300x fewer than
``store-in-server``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from bench.tasks.ctr.ams.launch import MODES, AmsOptions, launch, make_job
from bench.tasks.ctr.synthetic import make_log
from bench.tasks.ctr.train import CtrConfig, prepare

TARGET_RATIO = 300.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--small", action="store_true", help="D=512, 3 iterations, small log")
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--items", type=int, default=2000, help="images in the synthetic log")
    parser.add_argument("--users", type=int, default=1500)
    parser.add_argument("--modes", default="all", help="comma-separated modes or 'all'")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--out", help="keep each mode's run records under this folder")


def run(args: argparse.Namespace) -> int:
    dim, iterations, items, users = args.dim, args.iterations, args.items, args.users
    if args.small:
        dim, iterations, items, users = 512, 3, 300, 200
    dataset, embeddings = make_log(n_users=users, n_items=items, n_days=3, per_day=10, seed=0)
    data = prepare(dataset.logs["impressions"], dataset.table, dataset.ids, 20)
    vectors = embeddings.take(data.item_rows)
    config = CtrConfig(image_hidden=(256, 64), image_dim=12, batch_size=args.batch_size,
                         epochs=100)
    modes = MODES if args.modes == "all" else tuple(args.modes.split(","))
    summaries = {}
    for mode in modes:
        options = AmsOptions(modes=(mode,), servers=args.servers, workers=args.workers, dim=dim,
                             max_iterations=iterations, evaluate=False, threads=args.threads)
        job = make_job(data, vectors, config, 0, options, dataset.ids[data.item_rows])
        start = time.perf_counter()
        out = f"{args.out}/{mode}" if args.out else tempfile.mkdtemp(prefix=f"perf-ams-{mode}-")
        result = launch(job, out)
        if result["status"] != "ok":
            print(f"{mode}: failed: {result['errors']}")
            return 1
        summaries[mode] = result["modes"][mode]["summary"]
        print(f"{mode}: {time.perf_counter() - start:.1f} s for the launch", flush=True)
    print(f"D={dim}, sub-model {dim}-256-64-12, {args.servers} servers, {args.workers} workers, "
          f"batch {args.batch_size}, {iterations} iterations (means leave out the first)")
    print(f"{'mode':<16}{'image MB/it':>12}{'grad MB/it':>11}{'key MB/it':>10}"
          f"{'model MB/it':>12}{'iter s':>8}{'RSS worker':>11}{'RSS server':>11}"
          f"{'held worker':>12}{'held server':>12}")
    for mode, s in summaries.items():
        print(f"{mode:<16}{s['image_bytes_per_iter'] / 1e6:>12.3f}"
              f"{s['image_grad_bytes_per_iter'] / 1e6:>11.3f}{s['key_bytes_per_iter'] / 1e6:>10.3f}"
              f"{s['model_bytes_per_iter'] / 1e6:>12.3f}{s['iter_s']:>8.3f}"
              f"{s.get('worker_peak_rss_mb', 0):>10.0f}M{s.get('server_peak_rss_mb', 0):>10.0f}M"
              f"{s.get('worker_held_mb', 0):>11.1f}M{s.get('server_held_mb', 0):>11.1f}M")
    if "ams" in summaries and "store-in-server" in summaries:
        ams, raw = summaries["ams"], summaries["store-in-server"]
        ratio = raw["image_bytes_per_iter"] / max(ams["image_bytes_per_iter"], 1.0)
        total = raw["boundary_bytes_per_iter"] / max(ams["boundary_bytes_per_iter"], 1.0)
        verdict = ("met" if ratio >= TARGET_RATIO else "NOT met") if dim >= 4096 else \
            f"applies at D=4096; here the ratio is D/12 = {dim / 12:.1f}"
        print(f"image bytes per iteration, store-in-server / ams: {ratio:.1f}x "
              f"(target >= {TARGET_RATIO:.0f}x: {verdict}); all worker<->server bytes "
              f"(with image gradients and keys): {total:.1f}x")
        if dim >= 4096 and ratio < TARGET_RATIO:
            return 1
    return 0
