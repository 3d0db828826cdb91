"""Fine-tuning shared by the ``finetune_classify`` and ``finetune_retrieval`` tasks
(bench/tasks/finetune.py): copies of an extractor's backbone (as trained, or re-initialised
from scratch), flip-and-crop augmentations (``bench.train.augment``), SGD with a budget on the
suite's one training loop (``bench.train.loop.fit_loop``), and small JSON caches so a scratch
baseline is trained once per (data, architecture, budget, seed).

Why here and not in the tasks: the pretrained-vs-scratch comparison is only fair when both runs
share every line of the training code; keeping the loop in one place guarantees that.
The extractor's own backbone is never modified: every run works on a ``copy.deepcopy``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.core.cache import CODE_VERSION, Cache, cached, fingerprint
from bench.scoring.stats import Evidence
from bench.train.augment import CropFlip, augment
from bench.train.backbones import embed_images, images_to_tensor
from bench.train.loop import Plan, fit_loop, one_stream

FINETUNE_VERSION = "3"  # bump when training code changes what a cached result means (3: evidence)
ToTensor = Callable[[np.ndarray], torch.Tensor]


log = logging.getLogger(__name__).info


@dataclass(frozen=True)
class Budget:
    """What both the pretrained and the scratch run get: steps, schedule and a time cap."""

    epochs: int = 10
    max_steps: int = 0  # when > 0, at most this many steps (keeps run time independent of data size)
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_fraction: float = 0.05  # linear warm-up, then cosine decay to zero
    max_seconds: float = 60.0  # safety stop (0: none); a capped run is marked, never cached
    crop_padding: float = 0.125  # random crop after reflect padding by this share of the side
    # the run's resolved training precision (bench.train.precision; None: the device's
    # default); set by the tasks from the run, never a task option, so it is not in ``key()``
    # and the tasks add it to their result keys themselves
    precision: str | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Budget:
        known = {f.name: f.type for f in fields(cls) if f.name != "precision"}
        values = {k: (int(v) if known[k] == "int" else float(v))
                  for k, v in options.items() if k in known}
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> dict[str, Any]:
        """What a result depends on: everything but the time cap (capped runs are not cached)
        and the precision (the tasks key it themselves)."""
        return {k: v for k, v in asdict(self).items() if k not in ("max_seconds", "precision")}


@dataclass
class TrainLog:
    """What happened in one run: steps done of those planned, seconds, mean loss per epoch."""

    steps: int = 0
    planned_steps: int = 0
    seconds: float = 0.0
    epoch_losses: list[float] = field(default_factory=list)

    @property
    def capped(self) -> bool:
        return self.steps < self.planned_steps

    def result(self, metrics: dict[str, float], budget: Budget,
               evidence: dict[str, Evidence] | None = None) -> dict[str, Any]:
        """A task's cached fine-tune result: its metrics (with their per-unit evidence, for
        intervals) plus time, steps and the run's log."""
        metrics = {**metrics, "finetune_s": self.seconds, "finetune_steps": float(self.steps)}
        return {"metrics": metrics, "epoch_losses": self.epoch_losses,
                "planned_steps": self.planned_steps, "capped": self.capped,
                "budget": budget.as_dict(),
                "evidence": {m: e.to_json() for m, e in (evidence or {}).items()}}


# --------------------------------------------------------------------------- backbones


def finetune_copy(backbone: nn.Module) -> nn.Module:
    """A deep copy to train, so the extractor's backbone (and its embeddings) stay untouched."""
    return copy.deepcopy(backbone)


def scratch_copy(backbone: nn.Module, seed: int) -> nn.Module:
    """The same architecture with fresh weights: a deep copy whose every module is re-initialised.

    ``reset_parameters`` gives each layer PyTorch's default initialisation (and resets
    BatchNorm's running statistics); convolutions then get torchvision's ResNet initialisation
    (Kaiming normal, fan-out), so the scratch baseline starts as torchvision would train it.
    Parameters held by a module without ``reset_parameters`` get N(0, 0.02).
    """
    model = copy.deepcopy(backbone).cpu()  # initialise on the CPU RNG: the same on any device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            else:
                for parameter in module.parameters(recurse=False):
                    nn.init.normal_(parameter, std=0.02)
    return model


def architecture_key(backbone: nn.Module) -> str:
    """A fingerprint of the module tree (its repr: layers, strides, kernel sizes) and every
    parameter's shape, not the values: equal keys mean the same architecture."""
    shapes = [(name, list(p.shape)) for name, p in backbone.state_dict().items()]
    return fingerprint(repr(backbone), shapes)


def _setting(extractor: Any, backbone: nn.Module, name: str) -> Any:
    options = getattr(extractor, "options", None)
    for value in (getattr(extractor, name, None),
                  options.get(name) if isinstance(options, dict) else None,
                  getattr(backbone, name, None), getattr(backbone, f"_{name}", None)):
        if value is not None:
            return value
    return None


def architecture_label(extractor: Any, backbone: nn.Module) -> str:
    """A short readable name for the scratch row, e.g. ``resnet18-w32-strided``; the class
    name and parameter count when the extractor does not say."""
    arch = _setting(extractor, backbone, "arch")
    if arch is None:
        count = sum(p.numel() for p in backbone.parameters())
        return f"{type(backbone).__name__}-{count / 1e6:.2f}M"
    parts = [str(arch)]
    width = _setting(extractor, backbone, "width")
    if width is not None:
        parts.append(f"w{width}")
    stem = getattr(backbone, "stem", None)
    if isinstance(stem, str):
        parts.append(stem)
    return "-".join(parts)


def image_transform(extractor: Any) -> ToTensor:
    """The extractor's own ``preprocess`` when it has one, else the suite's standard one."""
    preprocess = getattr(extractor, "preprocess", None)
    if callable(preprocess):
        return preprocess
    return standard_transform(getattr(extractor, "image_size", None))


def standard_transform(image_size: int | None) -> ToTensor:
    return lambda images: images_to_tensor(images, image_size)


def feature_dim(backbone: nn.Module, sample: torch.Tensor) -> int:
    """Width of the pooled features, from one no-grad eval forward of two images."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        dim = int(backbone(sample[:2]).flatten(1).shape[1])
    backbone.train(was_training)
    return dim


# --------------------------------------------------------------------------- training


def warmup_cosine(step: int, total: int, warmup_fraction: float) -> float:
    """Learning-rate factor: linear warm-up over the first steps, then cosine decay to 0."""
    warmup = max(1, int(round(warmup_fraction * total)))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train(model: nn.Module, n_items: int, loss_fn: Callable[[torch.Tensor], torch.Tensor],
          budget: Budget, generator: torch.Generator, device: torch.device) -> TrainLog:
    """SGD with momentum and a warm-up + cosine schedule over ``epochs`` shuffled passes of
    ``n_items`` (the last incomplete batch is dropped), at most ``max_steps`` steps;
    ``loss_fn(indices)`` returns the loss of one batch. The loop is the suite's one
    (``bench.train.loop.fit_loop``), without checkpoints (results are cached instead) and with
    one generator for the whole run. Stops early (logged, and visible as fewer ``steps`` than
    ``planned_steps``) when ``max_seconds`` (> 0) is reached, checked before every step."""
    batch_size = max(2, min(budget.batch_size, n_items))  # BatchNorm needs two samples
    plan = Plan(budget.epochs, max(1, n_items // batch_size), batch_size,
                max_steps=budget.max_steps, max_seconds=budget.max_seconds,
                stop_within_epoch=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=budget.lr, momentum=budget.momentum,
                                weight_decay=budget.weight_decay)
    planned = plan.total_steps
    start = time.perf_counter()
    state = fit_loop(model, optimizer, lambda indices, info: loss_fn(indices), plan,
                     name="fine-tuning", device=device, shuffle=one_stream(n_items, generator),
                     lr_at=lambda step: budget.lr * warmup_cosine(step, planned,
                                                                  budget.warmup_fraction),
                     precision=budget.precision)
    log_ = TrainLog(steps=state.steps, planned_steps=planned,
                    seconds=time.perf_counter() - start,
                    epoch_losses=list(state.history.get("loss", [])))
    if log_.capped:
        log(f"fine-tuning stopped at its {budget.max_seconds:.0f} s cap after "
            f"{log_.steps} of {log_.planned_steps} steps")
    return log_


def batch_tensor(images: np.ndarray, indices: torch.Tensor, to_tensor: ToTensor,
                 device: torch.device, generator: torch.Generator, budget: Budget
                 ) -> torch.Tensor:
    """Preprocess and augment the images at ``indices`` on ``device``."""
    x = to_tensor(images[indices.numpy()]).to(device, non_blocking=True)
    return augment(x, CropFlip(budget.crop_padding), generator)


def finetune_classifier(backbone: nn.Module, images: np.ndarray, labels: np.ndarray,
                        n_classes: int, budget: Budget, seed: int, to_tensor: ToTensor,
                        device: torch.device) -> tuple[nn.Sequential, TrainLog]:
    """Train ``backbone`` (in place: pass a copy) and a new linear head with cross-entropy on
    uint8 ``images`` [n, H, W, 3] and integer ``labels``; returns (backbone + head, log)."""
    generator = torch.Generator().manual_seed(seed)
    backbone = backbone.to(device)
    dim = feature_dim(backbone, to_tensor(images[:2]).to(device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(dim, n_classes)
    model = nn.Sequential(backbone, nn.Flatten(1), head.to(device))
    targets = torch.as_tensor(labels, dtype=torch.long)
    criterion = nn.CrossEntropyLoss()

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        x = batch_tensor(images, idx, to_tensor, device, generator, budget)
        return criterion(model(x).float(), targets[idx].to(device))

    return model, train(model, len(images), loss_fn, budget, generator, device)


def finetune_pairs(backbone: nn.Module, images: np.ndarray, pairs: Callable[[torch.Tensor],
                   tuple[np.ndarray, np.ndarray]], n_groups: int, budget: Budget, seed: int,
                   to_tensor: ToTensor, device: torch.device, temperature: float = 0.1
                   ) -> tuple[nn.Module, TrainLog]:
    """Metric learning: lightly's NTXentLoss (InfoNCE) on the pooled features of positive
    pairs. An epoch is one pass over ``n_groups`` (identities); ``pairs(group_indices)`` picks
    one (anchor, positive) pair of image positions per group, so a batch holds no two pairs of
    the same identity and every other pair is a true negative."""
    from lightly.loss import NTXentLoss

    generator = torch.Generator().manual_seed(seed)
    model = backbone.to(device)
    criterion = NTXentLoss(temperature=temperature)

    def loss_fn(groups: torch.Tensor) -> torch.Tensor:
        anchors, positives = pairs(groups)
        both = torch.as_tensor(np.concatenate([anchors, positives]))
        features = model(batch_tensor(images, both, to_tensor, device, generator, budget))
        a, p = features.float().flatten(1).chunk(2)  # one forward: shared BatchNorm statistics
        return criterion(a, p)

    return model, train(model, n_groups, loss_fn, budget, generator, device)


def predict(model: nn.Module, images: np.ndarray, to_tensor: ToTensor, device: torch.device,
            batch_size: int = 256) -> np.ndarray:
    """Eval-mode outputs (logits or features) for uint8 images, float32 numpy [n, d], through
    the suite's one embedding function (``backbones.embed_images``)."""
    batches = (images[start:start + batch_size] for start in range(0, len(images), batch_size))
    return embed_images(model, batches, None, device, to_tensor=to_tensor)


# --------------------------------------------------------------------------- caching


def result_key(*parts: Any) -> str:
    return fingerprint(*parts, FINETUNE_VERSION, CODE_VERSION)


def cached_result(cache: Cache | None, kind: str, key: str | None,
                  compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()`` once per key: results are JSON files under the cache (written atomically);
    an unreadable entry is logged and recomputed. No cache or no key: always compute. A result
    marked ``"capped"`` (training cut short by its time cap, so it reflects the machine's load
    rather than the budget) is returned but not stored; a damaged entry is moved aside."""
    return cached(cache, kind, key, compute, valid=lambda v: isinstance(v, dict),
                  keep=lambda result: not result.get("capped"))


def result_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A fine-tune result as task rows (the cell's variant, ``ft``, and extractor label are
    the runner's); rows of a training its time cap cut short carry ``cut``."""
    evidence = result.get("evidence", {})
    return [{"metric": m, "value": float(v), **cut_note(result),
             **({"evidence": Evidence.from_json(evidence[m])} if m in evidence else {})}
            for m, v in result["metrics"].items()]


def cut_note(result: dict[str, Any]) -> dict[str, str]:
    """``{"cut": reason}`` for a result its ``max_seconds`` cap cut short, else ``{}``."""
    if not result.get("capped"):
        return {}
    steps = int(result["metrics"].get("finetune_steps", 0))
    cap = result.get("budget", {}).get("max_seconds", "?")
    return {"cut": f"fine-tuning stopped by its max_seconds={cap} safety stop after {steps} "
                   f"of {result.get('planned_steps')} steps"}


def own_result(task: str, extractor: Any, embeddings_key: str | None, data_key: tuple,
               seed: int, cache: Cache | None,
               train_and_score: Callable[[nn.Module, ToTensor], dict[str, Any]]
               ) -> dict[str, Any]:
    """``train_and_score`` on a copy of the extractor's backbone with its preprocessing,
    cached by its embeddings fingerprint (which keys its weights; None: not cached)."""
    return cached_result(
        cache, "finetune", embeddings_key and result_key(task, embeddings_key, *data_key, seed),
        lambda: train_and_score(finetune_copy(extractor.backbone()), image_transform(extractor)))


def scratch_architecture(extractor: Any, image_size: int | None) -> tuple[str, str]:
    """(key, label) of the scratch baseline an extractor's backbone stands for: backbones of
    one architecture and input size share it, e.g. label ``resnet18-w32-strided``."""
    backbone = extractor.backbone()
    return (f"{architecture_key(backbone)}-{image_size}",
            architecture_label(extractor, backbone))


def scratch_result(task: str, extractor: Any, image_size: int | None, data_key: tuple,
                   seed: int, cache: Cache | None,
                   train_and_score: Callable[[nn.Module, ToTensor], dict[str, Any]]
                   ) -> dict[str, Any]:
    """``train_and_score`` on a re-initialised copy of the extractor's backbone (with the
    standard preprocessing at ``image_size``): the same loop and budget as ``own_result``.
    Cached by architecture, image size and ``data_key`` (dataset, budget) and seed, so the
    result does not depend on which extractor of that architecture lends its backbone."""
    backbone = extractor.backbone()
    key = result_key(f"{task}-scratch", architecture_key(backbone), image_size, *data_key, seed)
    return cached_result(
        cache, "finetune", key,
        lambda: train_and_score(scratch_copy(backbone, seed), standard_transform(image_size)))
