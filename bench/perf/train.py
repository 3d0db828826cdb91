"""``bench perf train``: images/s of our training loop (``bench.train.ssl.train``) against a bare
loop written like lightly's MoCo and SwAV examples, on the same backbone, batch, data and
augmentation output, in one run; the ratio is the figure (target >= 0.9). With
``--transforms`` it also times lightly's own per-image PIL transforms (``MoCoV2Transform``,
``SwaVTransform``) against the batched tensor augmentations the loop uses.

Defaults follow the DESIGN reference (ResNet-18, full width, ImageNet stem, 32 px, batch 256,
SwAV with 2+4 crops); ``--small`` is a quick check with a narrow network.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from lightly.loss import NTXentLoss, SwaVLoss
from lightly.models.utils import update_momentum
from lightly.utils.scheduler import cosine_schedule

from bench.core import registry
from bench.core.cache import Cache
from bench.core.config import get_profile
from bench.train.augment import augment, to_unit
from bench.train.backbones import amp_context
from bench.train.ssl import TrainConfig, train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--small", action="store_true", help="width 16, batch 64, 4 steps")
    parser.add_argument("--methods", default="moco_v2,swav")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--stem", default="imagenet", help="small | strided | imagenet")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per loop")
    parser.add_argument("--local-crops", type=int, default=2, help="SwAV local crops (default profile: 2)")
    parser.add_argument("--transforms", action="store_true",
                        help="also time lightly's PIL transforms against the batched ones")


def _spec(method: str, args: argparse.Namespace) -> str:
    spec = (f"{method}:arch={args.arch},width={args.width},stem={args.stem},"
            f"image_size={args.image_size},batch_size={args.batch_size},epochs=1,"
            f"max_seconds=0")
    return spec + (f",local_crops={args.local_crops}" if method == "swav" else "")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reference_moco(method, data: torch.Tensor, batch: int, steps: int, options) -> float:
    """lightly's MoCo example loop, timed; returns images/s."""
    model, view = method.model, method.view
    criterion = NTXentLoss(temperature=options["temperature"],
                           memory_bank_size=method.criterion.memory_bank.size)
    criterion.to(data.device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.06,
                                momentum=0.9, weight_decay=5e-4)
    g = torch.Generator(data.device).manual_seed(0)
    _sync(data.device)
    start = time.perf_counter()
    for step in range(steps):
        x = to_unit(data[step * batch:(step + 1) * batch])
        momentum = cosine_schedule(step, steps, 0.996, 1)
        update_momentum(model.backbone, model.backbone_momentum, m=momentum)
        update_momentum(model.projection_head, model.projection_head_momentum, m=momentum)
        with amp_context(data.device):
            query = model(augment(x, view, g))
            key = model.forward_momentum(augment(x, view, g))
            loss = criterion(query.float(), key.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    _sync(data.device)
    return steps * batch / (time.perf_counter() - start)


def reference_swav(method, data: torch.Tensor, batch: int, steps: int, options) -> float:
    """lightly's SwAV example loop (one forward per crop), timed; returns images/s."""
    model = method.model
    criterion = SwaVLoss(temperature=options["temperature"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator(data.device).manual_seed(0)
    _sync(data.device)
    start = time.perf_counter()
    for step in range(steps):
        x = to_unit(data[step * batch:(step + 1) * batch])
        model.prototypes.normalize()
        views = ([augment(x, method.global_view, g) for _ in range(method.n_global)]
                 + [augment(x, method.local_view, g) for _ in range(method.n_local)])
        with amp_context(data.device):
            features = [model.prototypes(model.project(v), step).float() for v in views]
            loss = criterion(features[:method.n_global], features[method.n_global:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    _sync(data.device)
    return steps * batch / (time.perf_counter() - start)


REFERENCES = {"moco_v2": reference_moco, "swav": reference_swav}


def _warm_up(extractor, data: torch.Tensor, batch: int) -> None:
    """One untimed step so neither loop pays for kernel selection and allocation."""
    method = extractor.method(len(data))
    with tempfile.TemporaryDirectory() as tmp:
        train(method, data[:batch].cpu().numpy(), None,
              TrainConfig(epochs=1, batch_size=batch, max_seconds=0), name="warmup",
              key="warmup", cache=Cache(tmp), device=data.device, progress=False)


def time_methods(args: argparse.Namespace) -> None:
    profile = get_profile("default")
    for name in args.methods.split(","):
        n = args.batch_size * args.steps
        images = np.random.default_rng(0).integers(
            0, 256, (n, args.image_size, args.image_size, 3), dtype=np.uint8)
        extractor = registry.build_extractor(_spec(name, args), profile)
        device = torch.device(extractor.device)
        data = torch.from_numpy(images).to(device)
        _warm_up(extractor, data, args.batch_size)
        reference = REFERENCES[name](registry.build_extractor(_spec(name, args), profile)
                                     .method(n), data, args.batch_size, args.steps,
                                     extractor.options)
        ours_extractor = registry.build_extractor(_spec(name, args), profile)
        with tempfile.TemporaryDirectory() as tmp:
            result = train(ours_extractor.method(n), images, None,
                           TrainConfig.from_options(ours_extractor.options), name=name,
                           key="perf", cache=Cache(tmp), device=device, progress=False)
        ratio = result.images_per_s / reference
        crops = f", 2+{args.local_crops} crops" if name == "swav" else ""
        print(f"{name}: {args.arch} width {args.width} {args.stem} stem, {args.image_size} px, "
              f"batch {args.batch_size}{crops}, {args.steps} steps on {device}")
        print(f"  our loop          {result.images_per_s:8.1f} img/s")
        print(f"  lightly-style ref {reference:8.1f} img/s")
        print(f"  ratio             {ratio:8.2f}  (target >= 0.9: "
              f"{'met' if ratio >= 0.9 else 'NOT met'})")


def time_transforms(args: argparse.Namespace) -> None:
    from lightly.transforms import MoCoV2Transform, SwaVTransform
    from PIL import Image

    size, n = args.image_size, 512
    images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    registry.load_plugins()
    profile = get_profile("default")
    swav = registry.build_extractor(_spec("swav", args), profile).method(n)
    pairs = {
        "moco_v2": (MoCoV2Transform(input_size=size, gaussian_blur=0.0),
                    registry.build_extractor(_spec("moco_v2", args), profile).method(n)),
        "swav": (SwaVTransform(crop_sizes=(size, swav.local_view.size),
                               crop_counts=(2, args.local_crops), gaussian_blur=0.0), swav),
    }
    pil = [Image.fromarray(image) for image in images]
    g = torch.Generator().manual_seed(0)
    for name, (transform, method) in pairs.items():
        start = time.perf_counter()
        for image in pil:
            transform(image)
        lightly_ips = n / (time.perf_counter() - start)
        start = time.perf_counter()
        x = to_unit(torch.from_numpy(images))
        if name == "moco_v2":
            augment(x, method.view, g), augment(x, method.view, g)
        else:
            [augment(x, method.global_view, g) for _ in range(2)]
            [augment(x, method.local_view, g) for _ in range(args.local_crops)]
        batched_ips = n / (time.perf_counter() - start)
        print(f"{name} views at {size} px: lightly PIL transform {lightly_ips:8.0f} img/s, "
              f"batched tensors {batched_ips:8.0f} img/s ({batched_ips / lightly_ips:.1f}x)")


def run(args: argparse.Namespace) -> int:
    if args.small:
        args.width, args.batch_size, args.steps = 16, 64, 4
    registry.load_plugins()
    print(f"{torch.get_num_threads()} threads")
    if args.transforms:
        time_transforms(args)
    time_methods(args)
    return 0
