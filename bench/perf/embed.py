"""``bench perf embed``: images/s of an extractor's whole ``embed`` path (dataset images ->
uint8 batches -> tensors -> eval forward -> float32 numpy) against a bare eval forward of the same
model on the same, already prepared tensors, in one run. Target: ratio >= 0.85.

Defaults follow the DESIGN reference (ResNet-18, full width, ImageNet stem, 32 px); ``--small``
is a quick check with a narrow network.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from bench.core import registry
from bench.core.config import get_profile
from bench.core.data import Dataset, array_image_source
from bench.train.backbones import amp_context, images_to_tensor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--small", action="store_true", help="width 16, 512 images")
    parser.add_argument("--extractor", default="moco_v2", help="a backbone extractor name")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--stem", default="imagenet", help="small | strided | imagenet")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--n", type=int, default=4096, help="images to embed")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many interleaved runs")


def _synthetic(n: int, size: int) -> Dataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    table = pd.DataFrame({"id": [f"p{i}" for i in range(n)], "split": "test"})
    return Dataset("perf", table, array_image_source(images), size, f"perf-{n}-{size}")


def _seconds(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> int:
    if args.small:
        args.width, args.n = 16, 512
    registry.load_plugins()
    spec = (f"{args.extractor}:arch={args.arch},width={args.width},stem={args.stem},"
            f"image_size={args.image_size}")
    extractor = registry.build_extractor(spec, get_profile("default"))
    extractor.batch_size = args.batch_size
    model, device = extractor.backbone(), torch.device(extractor.device)
    dataset = _synthetic(args.n, args.image_size)
    rows = np.arange(args.n)
    tensors = [images_to_tensor(dataset.images(rows[i:i + args.batch_size]), args.image_size,
                                device) for i in range(0, args.n, args.batch_size)]

    @torch.no_grad()
    def bare() -> None:
        with amp_context(device):
            for x in tensors:
                model(x)

    model.eval()
    extractor.embed(dataset, rows[:args.batch_size])  # warm-up: kernels, allocator
    bare()
    embed_times, bare_times = [], []
    for _ in range(args.repeats):  # interleaved, best of each: load drifts hit both alike
        embed_times.append(_seconds(lambda: extractor.embed(dataset, rows), device))
        model.eval()
        bare_times.append(_seconds(bare, device))
    embed_s, bare_s = min(embed_times), min(bare_times)
    embed_ips, bare_ips = args.n / embed_s, args.n / bare_s
    print(f"{spec} on {device}, {args.n} images, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")
    print(f"  embed path   {embed_ips:8.0f} img/s")
    print(f"  bare forward {bare_ips:8.0f} img/s")
    ratio = embed_ips / bare_ips
    print(f"  ratio        {ratio:8.2f}  (target >= 0.85: {'met' if ratio >= 0.85 else 'NOT met'})")
    return 0
