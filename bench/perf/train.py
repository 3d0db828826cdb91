"""``bench perf train``: with ``--precisions``, images/s of each SSL method's real training step
(``moco_v2`` with its momentum encoder and queue, ``swav`` with its multi-crop, ``m6_moe``) at
the default profile's backbone, image size and batch, in fp32, bf16 autocast, channels_last and
bf16 + channels_last (``--compile`` adds torch.compile), interleaved over rounds in one run,
with ratios against fp32 (docs/performance.md). Without it: images/s of our training loop (``bench.train.ssl.train``) against a bare
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
from pathlib import Path

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
from bench.train.precision import bf16_supported, resolve_precision
from bench.train.ssl import TrainConfig, train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--small", action="store_true", help="width 16, batch 64, 4 steps")
    parser.add_argument("--methods", default=None,
                        help="default: moco_v2,swav (with --precisions: moco_v2,swav,m6_moe)")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--stem", default="imagenet", help="small | strided | imagenet")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per loop")
    parser.add_argument("--local-crops", type=int, default=2, help="SwAV local crops (default profile: 2)")
    parser.add_argument("--precisions", action="store_true",
                        help="compare fp32, bf16, channels_last and both per SSL method at the "
                             "default profile's settings (uses --methods, --steps, --rounds)")
    parser.add_argument("--rounds", type=int, default=2, help="--precisions: timed rounds")
    parser.add_argument("--compile", action="store_true",
                        help="--precisions: also time torch.compile'd backbones (fp32, bf16)")
    parser.add_argument("--transforms", action="store_true",
                        help="also time lightly's PIL transforms against the batched ones")
    parser.add_argument("--hotspots", action="store_true",
                        help="per SSL method at the default profile's settings: the share of "
                             "a training step spent in its augmentations (every crop) and the "
                             "step at 1 thread against the default thread count")


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


# (label, precision, channels_last, compiled)
VARIANTS = (("fp32", "fp32", False, False), ("bf16", "bf16", False, False),
            ("fp32+cl", "fp32", True, False), ("bf16+cl", "bf16", True, False))
COMPILED = (("fp32+compile", "fp32", False, True), ("bf16+compile", "bf16", False, True))


def _prepare_backbone(module: torch.nn.Module, channels_last: bool, compiled: bool) -> None:
    """Channels-last weights (the convolutions then run in NHWC) and/or a compiled forward."""
    if channels_last:
        module.to(memory_format=torch.channels_last)
    if compiled:
        module.compile()


def time_step(name: str, precision: str, channels_last: bool, compiled: bool, steps: int,
              seed: int = 0) -> tuple[float, int]:
    """images/s of ``steps`` real training steps of ``name`` at the default profile's budget
    (one epoch of ``steps`` batches on random images, through the method's own training
    function and the suite's loop), and the batch size."""
    profile = get_profile("default")
    spec = f"{name}:precision={precision},epochs=1,max_seconds=0"
    extractor = registry.build_extractor(spec, profile)
    options = extractor.options
    batch = int(options["batch_size"])
    n, size = batch * steps, int(options["image_size"])
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        if name == "m6_moe":
            return _time_m6(extractor, images, channels_last, compiled, rng, Path(tmp)), batch
        _prepare_backbone(extractor.model, channels_last, compiled)
        result = train(extractor.method(n), images, None,
                       TrainConfig.from_options(options), name=name, key="perf",
                       cache=Cache(tmp), device=extractor.device, progress=False)
    return result.images_per_s, batch


def _time_m6(extractor, images: np.ndarray, channels_last: bool, compiled: bool,
             rng: np.random.Generator, tmp: Path) -> float:
    """``m6_moe``'s training function on random titles (a 200-word vocabulary)."""
    from extractors import m6_moe

    options, vocab = extractor.options, [*m6_moe.SPECIALS, *(f"w{i}" for i in range(196))]
    torch.manual_seed(options["seed"])
    model = m6_moe.M6MoE(len(vocab), options)
    _prepare_backbone(model.image, channels_last, compiled)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options["lr"],
                                  weight_decay=options["weight_decay"])
    ids = torch.as_tensor(rng.integers(len(m6_moe.SPECIALS), len(vocab),
                                       (len(images), options["max_words"])))
    log = m6_moe.train(model, optimizer, images, ids, options, path=tmp / "m6.pt", key="perf",
                       vocab=vocab, device=extractor.device, progress=False)
    return float(log["images_per_s"])


def time_precisions(args: argparse.Namespace) -> None:
    """Every variant of every method: one untimed warm-up step each, then ``rounds`` rounds
    of ``steps`` steps, variants interleaved within a round (so a change in the machine's load
    hits them alike); the median per variant and its ratio to fp32."""
    variants = VARIANTS + (COMPILED if args.compile else ())
    methods = args.methods.split(",") if args.methods_given else ["moco_v2", "swav", "m6_moe"]
    lines = []
    for name in methods:
        for _label, precision, cl, compiled in variants:  # kernel choice, allocations
            time_step(name, precision, cl, compiled, 1)
        rates: dict[str, list[float]] = {label: [] for label, *_ in variants}
        batch = 0
        for _ in range(args.rounds):
            for label, precision, cl, compiled in variants:
                rate, batch = time_step(name, precision, cl, compiled, args.steps)
                rates[label].append(rate)
        base = float(np.median(rates["fp32"]))
        options = registry.build_extractor(name, get_profile("default")).options
        lines.append(f"{name}: {options['arch']} width {options['width']} {options['stem']} "
                     f"stem, {options['image_size']} px, batch {batch}, {args.steps} steps x "
                     f"{args.rounds} rounds")
        for label, *_ in variants:
            median = float(np.median(rates[label]))
            spread = ", ".join(f"{r:.1f}" for r in rates[label])
            lines.append(f"  {label:<13} {median:8.1f} img/s  {median / base:5.2f}x fp32"
                         f"  (rounds: {spread})")
        print("\n".join(lines[-len(variants) - 1:]), flush=True)


def method_views(name: str, method) -> list:
    """Every view one training step of ``name`` draws per image, in its order."""
    if name == "swav":
        return ([method.global_view] * method.n_global) + ([method.local_view] * method.n_local)
    if name == "moco_v2":
        return [method.view, method.view]
    raise ValueError(f"--hotspots times moco_v2 and swav, not {name!r}")


def time_augmentation(name: str, steps: int, seed: int = 0) -> float:
    """images/s of the augmentations alone of ``steps`` batches of ``name``'s real step at the
    default profile's settings: every view, drawn under the run's precision as the loop does."""
    extractor = registry.build_extractor(f"{name}:epochs=1,max_seconds=0", get_profile("default"))
    options, device = extractor.options, torch.device(extractor.device)
    batch, size = int(options["batch_size"]), int(options["image_size"])
    views = method_views(name, extractor.method(batch * steps))
    images = np.random.default_rng(seed).integers(0, 256, (batch * steps, size, size, 3),
                                                  dtype=np.uint8)
    data = torch.from_numpy(images).to(device)
    g = torch.Generator(device).manual_seed(seed)
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad(), amp_context(device, options["precision"]):
        for step in range(steps):
            x = to_unit(data[step * batch:(step + 1) * batch])
            for view in views:
                augment(x, view, g)
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def time_hotspots(args: argparse.Namespace) -> None:
    """Per method, interleaved over ``rounds``: the real step at the default thread count and
    at one thread, and its augmentations alone; medians, the augmentations' share of the step
    time and the one-thread ratio. Training reads no files (the uint8 images sit on the device
    and the loop indexes them), so there is no DataLoader to time here."""
    threads = torch.get_num_threads()
    methods = args.methods.split(",") if args.methods_given else ["moco_v2", "swav"]
    for name in methods:
        time_step(name, "auto", False, False, 1)
        time_augmentation(name, 1)
        rates: dict[str, list[float]] = {"step": [], "step_1thread": [], "augment": []}
        for _ in range(args.rounds):
            rates["step"].append(time_step(name, "auto", False, False, args.steps)[0])
            torch.set_num_threads(1)
            try:
                rates["step_1thread"].append(time_step(name, "auto", False, False,
                                                       args.steps)[0])
            finally:
                torch.set_num_threads(threads)
            rates["augment"].append(time_augmentation(name, args.steps))
        step, one, aug = (float(np.median(rates[k])) for k in ("step", "step_1thread",
                                                                "augment"))
        print(f"{name}: default profile, {args.steps} steps x {args.rounds} rounds, "
              f"precision {resolve_precision('auto', 'cpu')}")
        print(f"  step, {threads} threads   {step:8.1f} img/s")
        print(f"  step, 1 thread    {one:8.1f} img/s  {one / step:5.2f}x")
        print(f"  augmentations     {aug:8.1f} img/s  {step / aug:5.1%} of the step's time "
              f"(every view, {threads} threads)", flush=True)


def run(args: argparse.Namespace) -> int:
    args.methods_given = args.methods is not None
    if args.hotspots:
        registry.load_plugins()
        time_hotspots(args)
        return 0
    if args.precisions:
        registry.load_plugins()
        print(f"{torch.get_num_threads()} threads; bf16 native: {bf16_supported('cpu')}")
        time_precisions(args)
        return 0
    if args.small:
        args.width, args.batch_size, args.steps = 16, 64, 4
    registry.load_plugins()
    print(f"{torch.get_num_threads()} threads")
    args.methods = args.methods or "moco_v2,swav"
    if args.transforms:
        time_transforms(args)
    time_methods(args)
    return 0
