"""``bench perf stream --folder DIR``: the user's path at real resolution, against a bare forward.

Measured in one run, for a third-party extractor (default ``timm:resnet18:weights=random``) on
a folder dataset (e.g. ``bench export homestead --image-size 224``):

- ``whole``: images/s of the whole streamed path, as ``bench run`` embeds a catalogue (JPEG
  decoding and the model's preprocessing in DataLoader workers, the eval forward, shards
  written to disk), in a fresh process per catalogue size (``--n 5000 --n 20000``: the first
  items of the folder, its rows repeated with new ids past its end, see
  ``bench.cli.export.subset``), with that process's peak RSS and its workers' peak RSS;
- ``bare``: images/s of the same model's eval forward on tensors already preprocessed and in
  memory, before and after the whole-path runs (the mean is the reference; the two show drift);
- ``decode``: images/s of decoding and preprocessing alone in the same workers, to show whether
  decoding is the bottleneck.

Target (issue #15): whole / bare >= 0.8 with 2 workers on a 2-core machine, and a peak RSS that
does not grow with the catalogue.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_EXTRACTOR = "timm:resnet18:weights=random"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--folder", help="a folder dataset (manifest.csv); required")
    parser.add_argument("--extractor", default=DEFAULT_EXTRACTOR, help="an extractor spec")
    parser.add_argument("--n", type=int, action="append", default=None,
                        help="catalogue sizes (the first N items); repeat for several")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bare-images", type=int, default=512,
                        help="preprocessed images held in memory for the bare forward")
    parser.add_argument("--decode-images", type=int, default=1024)
    parser.add_argument("--small", action="store_true", help="a quick check: 256 images")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)


def _setup(args: argparse.Namespace):
    from bench.core import registry
    from bench.core.cache import Cache
    from bench.core.config import get_profile

    registry.load_plugins()
    extractor = registry.build_extractor(args.extractor, get_profile("default"))
    if not hasattr(extractor, "transform"):
        raise SystemExit(f"perf stream: {args.extractor} is not a streamed adapter "
                         f"(timm:, hf:, open_clip:, torchscript:)")
    extractor.batch_size = args.batch_size
    cache = Cache(tempfile.mkdtemp(prefix="perf-stream-"))
    dataset = registry.build_dataset("folder", cache, root=args.folder, workers=args.workers)
    return extractor, dataset, cache


def child(args: argparse.Namespace) -> int:
    """One whole-path run over the first ``args.n[0]`` items, in this fresh process."""
    from bench.cli.export import subset
    from bench.embed.ranks import embed_dataset

    n = args.n[0]
    with tempfile.TemporaryDirectory(prefix="perf-stream-") as tmp:
        args.folder = str(subset(Path(args.folder), Path(tmp) / "catalogue", n))
        extractor, dataset, cache = _setup(args)
        start = time.perf_counter()
        embeddings = embed_dataset(extractor, dataset, cache, Path(tmp) / "log",
                                   progress=False).embeddings
        seconds = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"n": len(embeddings), "dim": embeddings.dim, "seconds": seconds,
                      "images_per_s": len(embeddings) / seconds, "peak_rss_mb": own,
                      "worker_peak_rss_mb": workers}))
    return 0


def bare_forward(extractor, dataset, n: int, batch_size: int) -> tuple[float, list]:
    """images/s of the eval forward on ``n`` preprocessed images already in memory."""
    reader = dataset.image_reader()
    tensors = []
    for row in range(min(n, len(dataset))):
        with reader.open(row) as image:
            tensors.append(torch.as_tensor(extractor.transform(image)))
    batches = [torch.stack(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)]
    with torch.no_grad():
        extractor.image_features(batches[0])  # warm-up
        start = time.perf_counter()
        for x in batches:
            extractor.image_features(x)
        seconds = time.perf_counter() - start
    return len(tensors) / seconds, batches


def decode_rate(extractor, dataset, n: int, batch_size: int, workers: int) -> float:
    from bench.embed.streaming import stream

    rows = np.arange(min(n, len(dataset)))
    start = time.perf_counter()
    for _ in stream(dataset.image_reader(), rows, extractor.transform, batch_size, workers):
        pass
    return len(rows) / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> int:
    if args.child:
        return child(args)
    if not args.folder:
        print("perf stream: skipped, it needs --folder DIR (bench export homestead "
              "--image-size 224 --out DIR makes one)")
        return 0
    sizes = args.n or ([256] if args.small else [5000, 20000])
    if args.small:
        args.bare_images, args.decode_images = 64, 64
    extractor, dataset, _ = _setup(args)
    print(f"perf stream: {args.extractor} on {args.folder} ({len(dataset)} items), batch "
          f"{args.batch_size}, {args.workers} workers, {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} cores")
    before, _ = bare_forward(extractor, dataset, args.bare_images, args.batch_size)
    decode = decode_rate(extractor, dataset, args.decode_images, args.batch_size, args.workers)
    print(f"  bare forward (before): {before:.1f} img/s on {args.bare_images} preloaded images")
    print(f"  decode + preprocess alone, {args.workers} workers: {decode:.1f} img/s")
    runs = []
    for n in sizes:
        command = [sys.executable, "-m", "bench", "perf", "stream", "--child", "--folder",
                   args.folder, "--extractor", args.extractor, "--n", str(n), "--workers",
                   str(args.workers), "--batch-size", str(args.batch_size)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-2000:])
            return 1
        result = json.loads(done.stdout.strip().splitlines()[-1])
        runs.append(result)
        print(f"  whole path, {result['n']} images: {result['images_per_s']:.1f} img/s "
              f"({result['seconds']:.0f} s), peak RSS {result['peak_rss_mb']:.0f} MB, "
              f"workers' peak RSS {result['worker_peak_rss_mb']:.0f} MB")
    after, _ = bare_forward(extractor, dataset, args.bare_images, args.batch_size)
    bare = (before + after) / 2
    print(f"  bare forward (after): {after:.1f} img/s; reference {bare:.1f} img/s")
    for result in runs:
        print(f"  ratio whole/bare at {result['n']} images: {result['images_per_s'] / bare:.2f} "
              f"(target >= 0.8)")
    if len(runs) > 1:
        first, last = runs[0], runs[-1]
        print(f"  peak RSS {last['n']} vs {first['n']} images: {last['peak_rss_mb']:.0f} vs "
              f"{first['peak_rss_mb']:.0f} MB (x{last['peak_rss_mb'] / first['peak_rss_mb']:.2f} "
              f"for x{last['n'] / first['n']:.0f} images)")
    return 0
