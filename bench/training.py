"""The training loop shared by the learned image extractors (pretrained, moco_v2, swav).

Why one loop: device choice (CUDA when present, bf16/fp16 autocast there), the progress bar, the
per-epoch loss log, the budget (epochs; ``max_seconds`` is only a safety stop, see ``SafetyStop``)
and the checkpoint cache are the same for every method. A method only supplies its model and the loss of one batch, as in
lightly's examples; see ``Method``.

Augmentations run on whole batches of tensors on the training device (``ViewSpec``/``augment``):
per-image PIL transforms cost more than the small-image forward pass itself on 2 CPU cores, and
torchvision's v2 transforms draw one set of parameters per call, not per image. The batched ops
draw every parameter per image and mirror lightly's ``MoCoV2Transform``/``SwaVTransform``
(random resized crop, flip, colour jitter, grayscale, optional Gaussian blur, ImageNet
normalisation); ``lightly_view`` reads the defaults from lightly's own transform signatures.

Checkpoints live under ``cache.path("checkpoints", f"{name}-{key}", ".pt")``, keyed by a
fingerprint of the extractor's config, the dataset and the code version. One is written
atomically after every epoch (with every buffer, memory banks too), so an interrupted or cut
training resumes from its last complete epoch and ends with the weights an uninterrupted one
would have; a finished one is a cache hit that skips training. A checkpoint that cannot be read (truncated,
not a checkpoint, another model) is refused with a message naming the file, moved aside to
``*.corrupt`` and training starts again.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    batched_images,
    build_backbone,
    images_to_tensor,
    pick_device,
)
from bench.cache import CODE_VERSION, Cache, atomic_path, fingerprint, write_json
from bench.extractor import FitContext, source_digest

TRAINING_VERSION = "3"  # bump when a checkpoint's meaning changes (3: steps-only schedule)
CHECKPOINT_FORMAT = 1
NOT_TRAINED = ("device", "max_seconds")  # options that never change a finished training


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Options: profile budget + plugin defaults + the spec's ``key=value`` options
# --------------------------------------------------------------------------------------------

def resolve_options(name: str, defaults: dict[str, dict[str, Any]], profile: Any,
                    options: dict[str, str], extra: Iterable[str] = ()) -> dict[str, Any]:
    """The profile's budget for ``name`` (``profile.budget(name, defaults)``) overridden by the
    spec's string options, each cast to the type of the budget value it replaces. Unknown keys
    are refused so a typo never silently trains the default model."""
    budget = profile.budget(name, defaults)
    merged = dict(budget)
    for key, text in options.items():
        if key in extra:
            merged[key] = text
            continue
        if key not in budget:
            known = ", ".join(sorted([*budget, *extra]))
            raise ValueError(f"{name}: unknown option {key!r}; known: {known}")
        merged[key] = _cast(text, budget[key], f"{name}: option {key}")
    return merged


def _cast(text: str, like: Any, where: str) -> Any:
    if isinstance(like, bool):
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"{where}: expected true/false, got {text!r}")
        return text.lower() in ("1", "true", "yes")
    try:
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float) or like is None:
            return float(text)
    except ValueError as error:
        raise ValueError(f"{where}: expected a number, got {text!r}") from error
    return text


# --------------------------------------------------------------------------------------------
# Batched augmentations (per-image random parameters, tensors on the training device)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ViewSpec:
    """One augmented view: output ``size`` and lightly-style augmentation strengths."""

    size: int
    min_scale: float = 0.2
    max_scale: float = 1.0
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    cj_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray: float = 0.2
    blur: float = 0.0
    sigmas: tuple[float, float] = (0.1, 2.0)


def lightly_view(transform: type, size: int, crop: int = 0, cj_strength: float | None = None,
                 **overrides: Any) -> ViewSpec:
    """A ``ViewSpec`` with the defaults of a lightly transform class (``MoCoV2Transform``,
    ``SwaVTransform``); ``crop`` picks the crop group of multi-crop transforms and
    ``cj_strength`` scales the colour jitter as lightly's argument of that name does."""
    d = {k: p.default for k, p in inspect.signature(transform).parameters.items()}
    strength = d.get("cj_strength", 1.0) if cj_strength is None else cj_strength
    min_scale = d["crop_min_scales"][crop] if "crop_min_scales" in d else d["min_scale"]
    max_scale = d["crop_max_scales"][crop] if "crop_max_scales" in d else 1.0
    spec = dict(size=size, min_scale=min_scale, max_scale=max_scale, hflip=d["hf_prob"],
                cj_prob=d["cj_prob"], brightness=d["cj_bright"] * strength,
                contrast=d["cj_contrast"] * strength, saturation=d["cj_sat"] * strength,
                hue=d["cj_hue"] * strength, gray=d["random_gray_scale"],
                blur=d["gaussian_blur"], sigmas=tuple(d["sigmas"]))
    spec.update(overrides)
    return ViewSpec(**spec)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1] (once per batch, shared by all views)."""
    return images.permute(0, 3, 1, 2).contiguous().float().div_(255.0)  # NCHW, see backbones


def augment(x: torch.Tensor, spec: ViewSpec, g: torch.Generator) -> torch.Tensor:
    """One random view of every image of ``x`` (float NCHW in [0, 1]), ImageNet-normalised."""
    x = _resized_crop_flip(x, spec, g)
    if spec.cj_prob > 0:
        x = _color_jitter(x, spec, g)
    if spec.gray > 0:
        gray = _luma(x).expand_as(x)
        x = torch.where(_coin(x, spec.gray, g).view(-1, 1, 1, 1), gray, x)
    if spec.blur > 0:
        x = _gaussian_blur(x, spec, g)
    return normalize(x)


def normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _uniform(x: torch.Tensor, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(x.shape[0], device=x.device, generator=g) * (high - low) + low


def _coin(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(x.shape[0], device=x.device, generator=g) < p


def _luma(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _resized_crop_flip(x: torch.Tensor, spec: ViewSpec, g: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop (area share in [min_scale, max_scale], aspect ratio in ``ratio``; a
    side that would leave the image is clipped) and a horizontal flip, as one bilinear affine
    resampling per image."""
    area = _uniform(x, spec.min_scale, spec.max_scale, g)
    ratio = torch.exp(_uniform(x, math.log(spec.ratio[0]), math.log(spec.ratio[1]), g))
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - w) * _uniform(x, -1.0, 1.0, g)
    cy = (1 - h) * _uniform(x, -1.0, 1.0, g)
    flip = torch.where(_coin(x, spec.hflip, g), -1.0, 1.0)
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([w * flip, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
    grid = F.affine_grid(theta, [x.shape[0], 3, spec.size, spec.size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _color_jitter(x: torch.Tensor, spec: ViewSpec, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation, hue with per-image factors, on a ``cj_prob`` share of
    the images. Fixed order (torchvision shuffles it); hue is a rotation in YIQ space, a cheap
    linear stand-in for torchvision's HSV shift."""
    on = _coin(x, spec.cj_prob, g).float()
    n = x.shape[0]

    def factor(strength: float, centre: float = 1.0) -> torch.Tensor:
        value = _uniform(x, centre - strength, centre + strength, g)
        return (on * value + (1 - on) * centre).view(n, 1, 1, 1)

    x = (x * factor(spec.brightness)).clamp_(0, 1)
    mean = _luma(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * factor(spec.contrast) + mean).clamp_(0, 1)
    gray = _luma(x)
    x = ((x - gray) * factor(spec.saturation) + gray).clamp_(0, 1)
    if spec.hue > 0:
        angle = factor(spec.hue, 0.0).view(n) * 2 * math.pi
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.zeros(n, 3, 3, device=x.device)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        yiq = _YIQ.to(x.device)
        matrix = torch.linalg.inv(yiq) @ rot @ yiq
        x = torch.einsum("nij,njhw->nihw", matrix, x).clamp_(0, 1)
    return x


def _gaussian_blur(x: torch.Tensor, spec: ViewSpec, g: torch.Generator) -> torch.Tensor:
    """Separable Gaussian blur, sigma drawn per image, applied to a ``blur`` share of images."""
    n, c, height, width = x.shape
    sigma = _uniform(x, *spec.sigmas, g)
    sigma = torch.where(_coin(x, spec.blur, g), sigma, torch.full_like(sigma, 1e-3))
    radius = max(1, min(int(math.ceil(2 * spec.sigmas[1])), min(height, width) // 2 - 1))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [n*c, k]
    flat = x.reshape(1, n * c, height, width)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, height, width)


# --------------------------------------------------------------------------------------------
# Methods and the loop
# --------------------------------------------------------------------------------------------

@dataclass
class StepInfo:
    """What a method's ``loss`` may need besides the batch."""

    step: int            # global optimisation step, 0-based
    total_steps: int     # planned steps (epochs x steps per epoch)
    epoch: int
    steps_per_epoch: int
    generator: torch.Generator  # for augmentations, seeded per epoch (resume reproduces them)


class Method(Protocol):
    """A training method: ``model`` holds every trained tensor (checkpointed), ``loss`` returns
    the scalar loss of one batch of uint8 NHWC images (on the device) and optional targets."""

    model: nn.Module

    def loss(self, images: torch.Tensor, targets: torch.Tensor | None,
             info: StepInfo) -> torch.Tensor: ...


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.06          # SGD learning rate per 128 images (scaled linearly with the batch)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_seconds: float = 0.0  # a safety stop per session, not a budget (SafetyStop); 0: none
    seed: int = 0

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> TrainConfig:
        return cls(**{k: options[k] for k in cls.__dataclass_fields__ if k in options})


@dataclass
class SafetyStop:
    """A wall-clock safety stop for one training session, never part of the budget.

    The budget is ``epochs`` (the learning-rate schedule runs over epochs x steps, whatever the
    machine's pace). ``max_seconds`` only bounds how long this process trains: when an epoch
    ends past it, training stops there, the checkpoint stays unfinished (never a cache hit for
    the full budget) and the next run resumes it from that epoch. 0 means no stop.
    """

    max_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def reached(self) -> bool:
        return self.max_seconds > 0 and time.perf_counter() - self.started >= self.max_seconds

    def describe(self, name: str, done: int, epochs: int) -> str:
        """The one line the run records (run.json ``time_capped``, the tables' marks)."""
        return (f"{name}: training stopped by its max_seconds={self.max_seconds:g} safety stop "
                f"after {done} of {epochs} epochs; the next run resumes it")


def buffers_of(*modules: Any) -> dict[str, torch.Tensor]:
    """Every buffer of these modules, non-persistent ones too (lightly's memory banks and
    queues are not in ``state_dict``), so a resumed training continues exactly."""
    out = {}
    for index, module in enumerate(modules):
        if isinstance(module, nn.Module):
            out.update({f"{index}.{name}": b.detach().cpu().clone()
                        for name, b in module.named_buffers()})
    return out


def restore_buffers(saved: dict[str, torch.Tensor], *modules: Any) -> None:
    for index, module in enumerate(modules):
        if isinstance(module, nn.Module):
            for name, buffer in module.named_buffers():
                value = saved.get(f"{index}.{name}")
                if value is not None and value.shape == buffer.shape:
                    buffer.copy_(value.to(buffer.device))


@dataclass
class TrainResult:
    losses: list[float]
    epochs: int
    wall_s: float
    images_seen: int
    cached: bool
    stopped_by: str
    device: str
    checkpoint: str
    extra: dict[str, Any] = field(default_factory=dict)
    cut: str | None = None  # set when the max_seconds safety stop ended training early

    @property
    def images_per_s(self) -> float:
        return self.images_seen / self.wall_s if self.wall_s > 0 else 0.0


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message names the file and why."""


def checkpoint_key(name: str, config: dict[str, Any], dataset_fingerprint: str,
                   n_items: int) -> str:
    """What a trained model depends on: its config, the data and the code version."""
    return fingerprint(name, config, dataset_fingerprint, n_items, CODE_VERSION,
                       TRAINING_VERSION)


def checkpoint_path(cache: Cache, name: str, key: str) -> Path:
    return cache.path("checkpoints", f"{name}-{key}", ".pt")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, key: str | None = None) -> dict[str, Any]:
    """The checkpoint at ``path`` (tensors and plain values only, ``weights_only=True``);
    raises ``CheckpointError`` naming the file when it is unreadable or not ours."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - every way of failing means "unusable"
        raise CheckpointError(f"checkpoint {path} is corrupted or unreadable "
                              f"({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a bench training checkpoint "
                              f"(format {CHECKPOINT_FORMAT})")
    missing = [k for k in ("model", "optimizer", "epoch", "losses", "done") if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    if key is not None and state.get("key") != key:
        raise CheckpointError(f"checkpoint {path} belongs to key {state.get('key')!r}, "
                              f"not {key!r}")
    return state


def _restore(path: Path, state: dict[str, Any], model: nn.Module,
             optimizer: torch.optim.Optimizer | None = None) -> None:
    try:
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {error}") from error


def _discard(path: Path, error: CheckpointError) -> None:
    bad = path.with_suffix(".corrupt")
    log(f"refusing {error}; moved it to {bad.name} and training from scratch")
    path.replace(bad)


def amp_context(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (fp16 where bf16 is missing), nothing on CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _progress_bar(total: int, initial: int, name: str, enabled: bool):
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (CI logs, files)
    return tqdm(total=total, initial=initial, desc=f"train {name}", unit="step",
                disable=None if enabled else True, leave=False, mininterval=1.0,
                file=sys.stderr)


def train(method: Method, images: np.ndarray, targets: np.ndarray | None, config: TrainConfig,
          *, name: str, key: str, cache: Cache, device: torch.device | str,
          log_dir: Path | None = None, progress: bool = True) -> TrainResult:
    """Train ``method.model`` on uint8 NHWC ``images`` (and integer ``targets``), or load the
    finished checkpoint of ``key``; resumes an unfinished one. SGD with momentum, a cosine
    learning rate over ``epochs`` x steps (never over time) and a checkpoint after every epoch.
    ``max_seconds`` is a safety stop (``SafetyStop``): a cut training returns ``cut`` set and
    leaves its checkpoint unfinished, so the next call resumes it."""
    device = torch.device(device)
    path = checkpoint_path(cache, name, key)
    model = method.model.to(device)
    criterion = getattr(method, "criterion", None)
    params = [p for p in model.parameters() if p.requires_grad]
    batch_size = min(config.batch_size, len(images))
    base_lr = config.lr * batch_size / 128
    optimizer = torch.optim.SGD(params, lr=base_lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    state = _resume_state(path, key, model, optimizer)
    if state is not None and state["done"]:
        result = _result(state, path, device, cached=True)
        _write_log(log_dir, name, key, result)
        log(f"{name}: trained weights from cache {path.name}")
        return result
    if state is not None:
        restore_buffers(state.get("buffers", {}), model, criterion)

    n = len(images)
    steps_per_epoch = max(1, n // batch_size)
    total_steps = config.epochs * steps_per_epoch
    data = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    labels = None if targets is None else torch.as_tensor(targets, dtype=torch.long).to(device)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda"
                                  and not torch.cuda.is_bf16_supported())
    start_epoch = int(state["epoch"]) if state else 0
    losses: list[float] = list(state["losses"]) if state else []
    wall = float(state["wall_s"]) if state else 0.0
    seen = int(state["images_seen"]) if state else 0
    stop = SafetyStop(config.max_seconds)
    result = _result(state, path, device, cached=False) if state else None
    model.train()
    bar = _progress_bar(total_steps, start_epoch * steps_per_epoch, name, progress)
    try:
        for epoch in range(start_epoch, config.epochs):
            started = time.perf_counter()
            cpu_gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=cpu_gen).to(device)
            aug_gen = torch.Generator(device).manual_seed(config.seed * 100_003 + epoch + 1)
            running = torch.zeros((), device=device)
            for i in range(steps_per_epoch):
                step = epoch * steps_per_epoch + i
                lr = base_lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                idx = order[i * batch_size:(i + 1) * batch_size]
                info = StepInfo(step, total_steps, epoch, steps_per_epoch, aug_gen)
                with amp_context(device):
                    loss = method.loss(data[idx], None if labels is None else labels[idx], info)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                running += loss.detach().float().sum()
                bar.update(1)
            epoch_loss = float(running) / steps_per_epoch
            if not math.isfinite(epoch_loss):
                raise FloatingPointError(f"{name}: the loss became {epoch_loss} in epoch "
                                         f"{epoch + 1}; lower the learning rate (lr=)")
            losses.append(epoch_loss)
            wall += time.perf_counter() - started
            seen += steps_per_epoch * batch_size
            bar.set_postfix(loss=f"{epoch_loss:.3f}")
            done = epoch + 1 >= config.epochs
            cut = None if done or not stop.reached() else stop.describe(name, epoch + 1,
                                                                         config.epochs)
            state = {"format": CHECKPOINT_FORMAT, "key": key, "name": name,
                     "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "buffers": buffers_of(model, criterion),
                     "epoch": epoch + 1, "losses": losses, "wall_s": wall,
                     "images_seen": seen, "done": done,
                     "stopped_by": "epochs" if done else "max_seconds", "cut": cut,
                     "config": asdict(config)}
            save_checkpoint(path, state)
            result = _result(state, path, device, cached=False)
            _write_log(log_dir, name, key, result)
            if done or cut:
                break
    finally:
        bar.close()
    if result.cut:
        log(result.cut)
    else:
        log(f"{name}: {len(losses)} epochs in {wall:.1f} s ({result.images_per_s:.0f} img/s, "
            f"loss {losses[0]:.3f} -> {losses[-1]:.3f})")
    return result


def _resume_state(path: Path, key: str, model: nn.Module,
                  optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        state = load_checkpoint(path, key)
        _restore(path, state, model, optimizer)
    except CheckpointError as error:
        _discard(path, error)
        return None
    if not state["done"]:
        log(f"resuming {path.name} after epoch {state['epoch']}")
    return state


def _result(state: dict[str, Any], path: Path, device: torch.device, cached: bool) -> TrainResult:
    return TrainResult(losses=[float(v) for v in state["losses"]], epochs=int(state["epoch"]),
                       wall_s=float(state["wall_s"]), images_seen=int(state["images_seen"]),
                       cached=cached, stopped_by=str(state.get("stopped_by", "epochs")),
                       device=str(device), checkpoint=str(path), cut=state.get("cut"))


def _write_log(log_dir: Path | None, name: str, key: str, result: TrainResult) -> None:
    """``train_log.json`` beside the run's artefacts, for the report's loss plots."""
    if log_dir is None:
        return
    write_json(Path(log_dir) / "train_log.json", {
        "extractor": name, "key": key, "epochs": list(range(1, len(result.losses) + 1)),
        "loss": result.losses, "wall_s": round(result.wall_s, 3),
        "images_per_s": round(result.images_per_s, 2), "images_seen": result.images_seen,
        "cached": result.cached, "stopped_by": result.stopped_by, "cut": result.cut,
        "device": result.device, "checkpoint": result.checkpoint})


def unlabelled_rows(dataset: Any, name: str, role: str = "all") -> np.ndarray:
    """The rows self-supervised methods learn from: the ``train``-split items of ``role``
    (``"all"``: every role). A dataset without a role column lends all of its train items; one
    without train items of that role does too, said so; one without a train split lends all of
    its rows, said so."""
    rows = dataset.rows(split="train")
    if role != "all":
        of_role = dataset.rows(role=role, split="train")
        if len(of_role) >= 2:
            return of_role
        log(f"{name}: dataset {dataset.name!r} has no train items of role {role!r}; "
            f"learning from all {len(rows)} train items")
    if len(rows) >= 2:
        return rows
    if len(dataset) < 2:
        raise ValueError(f"{name}: dataset {dataset.name!r} has {len(dataset)} images; "
                         "self-supervised training needs at least 2")
    log(f"{name}: dataset {dataset.name!r} has no train split; learning from all "
        f"{len(dataset)} images (no labels are used)")
    return np.arange(len(dataset))


# --------------------------------------------------------------------------------------------
# Embedding with a backbone
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def embed_backbone(model: nn.Module, image_batches: Iterable[np.ndarray], size: int,
                   device: torch.device | str) -> np.ndarray:
    """Pooled backbone features of every batch: eval mode, no gradient, autocast on CUDA;
    float32 [n, d]. The training mode is restored afterwards."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    outputs = []
    try:
        with amp_context(device):
            for images in image_batches:
                features = model(images_to_tensor(images, size, device))
                outputs.append(features.float().flatten(1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(outputs).astype(np.float32, copy=False)


class BackboneEmbedder:
    """``backbone()``, ``preprocess()`` and ``embed()`` for extractors whose embedding is a
    backbone's pooled features (never a projection head, as in lightly's benchmarks), and the
    self-supervised ``fit`` that trains a subclass's ``method`` on unlabelled train images."""

    modalities = ("image",)
    model: nn.Module
    image_size: int
    device: torch.device
    batch_size: int = 256

    def __init__(self, options: dict[str, Any], batch_size: int = 256):
        """A fresh backbone from the resolved options (arch, width, stem, seed, image_size)."""
        self.options = options
        self.image_size = int(options["image_size"])
        self.batch_size = batch_size
        self.device = pick_device(options["device"] or None)
        self.model = build_backbone(options["arch"], options["width"], stem=options["stem"],
                                    seed=options["seed"]).to(self.device)
        self.dim = self.model.feature_dim
        self.training_result = None

    def config(self) -> dict[str, Any]:
        """Every option but the device and the ``max_seconds`` safety stop (neither changes a
        finished training), the training code's version and the digest of the plugin's source
        file, so cached weights and embeddings follow the code that made them."""
        options = {k: v for k, v in self.options.items() if k not in NOT_TRAINED}
        return options | {"training_version": TRAINING_VERSION,
                          "source": source_digest(type(self))}

    @property
    def fit_cut(self) -> str | None:
        """Why the last ``fit`` stopped before its budget (the safety stop), else None."""
        return getattr(self.training_result, "cut", None)

    def method(self, n_items: int) -> Method:
        """The training objective (self-supervised extractors define it)."""
        raise NotImplementedError

    def fit(self, dataset: Any, ctx: FitContext) -> None:
        """Self-supervised: train ``method`` on the ``train``-split images (of the role the
        ``train_role`` option names, if any), no labels (cached by config and data)."""
        rows = unlabelled_rows(dataset, self.name, str(self.options.get("train_role", "all")))
        key = checkpoint_key(self.name, self.config(), dataset.fingerprint, len(rows))
        self.training_result = train(
            self.method(len(rows)), dataset.images(rows), None,
            TrainConfig.from_options(self.options), name=self.name, key=key, cache=ctx.cache,
            device=self.device, log_dir=ctx.log_dir, progress=ctx.progress)

    def backbone(self) -> nn.Module:
        """The trainable torch module (images -> pooled features); trained after ``fit``."""
        return self.model

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 NHWC images -> the normalised tensor ``backbone()`` expects."""
        return images_to_tensor(images, self.image_size, self.device)

    def embed(self, dataset: Any, rows: np.ndarray) -> np.ndarray:
        batches = batched_images(dataset, rows, self.batch_size)
        return embed_backbone(self.model, batches, self.image_size, self.device)
