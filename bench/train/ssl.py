"""Pretraining and self-supervised training on the one loop, and ``BackboneEmbedder``.

``train`` runs supervised pretraining (``pretrained``) and the self-supervised methods
(``moco_v2``, ``swav``: a ``Method`` supplies its model and the loss of one batch, as in
lightly's examples) with SGD and a cosine schedule on ``bench.train.loop.fit_loop``, and keeps
``train_log.json``. ``BackboneEmbedder`` is what those extractors share: the backbone, the
config with the training version, embedding through ``backbones.embed_images`` and the
self-supervised ``fit`` on the train items of ``train_role``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from bench.core.cache import Cache, write_json
from bench.core.code import source_digest
from bench.core.extractor import FitContext
from bench.train.backbones import (
    batched_images,
    build_backbone,
    embed_images,
    images_to_tensor,
    pick_device,
)
from bench.train.checkpoint import (
    TRAINING_VERSION,
    checkpoint_key,
    checkpoint_path,
    restore_checkpoint,
)
from bench.train.loop import (
    Checkpointing,
    Hooks,
    LoopState,
    Plan,
    StepInfo,
    fit_loop,
    seeded_epochs,
)
from bench.train.options import NOT_TRAINED
from bench.train.precision import resolve_precision

log = logging.getLogger(__name__).info


class Method(Protocol):
    """A training method: ``model`` holds every trained tensor (checkpointed), ``loss`` returns
    the scalar loss of one batch of uint8 NHWC images (on the device) and optional targets."""

    model: nn.Module

    def loss(self, images: torch.Tensor, targets: torch.Tensor | None,
             info: StepInfo) -> torch.Tensor: ...


@dataclass
class TrainConfig:
    """The budget of a backbone pretraining (``train``): SGD settings, epochs, seed."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.06          # SGD learning rate per 128 images (scaled linearly with the batch)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_seconds: float = 0.0  # a safety stop per session, not a budget (SafetyStop); 0: none
    seed: int = 0
    precision: str | None = None  # resolved (bench.train.precision); None: the device's default

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> TrainConfig:
        return cls(**{k: options[k] for k in cls.__dataclass_fields__ if k in options})


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


def train(method: Method, images: np.ndarray, targets: np.ndarray | None, config: TrainConfig,
          *, name: str, key: str, cache: Cache, device: torch.device | str,
          log_dir: Path | None = None, progress: bool = True) -> TrainResult:
    """Train ``method.model`` on uint8 NHWC ``images`` (and integer ``targets``) with
    ``fit_loop``, or load the finished checkpoint of ``key``; resumes an unfinished one. SGD
    with momentum, a cosine learning rate over ``epochs`` x steps (never over time) and a
    checkpoint after every epoch. ``max_seconds`` is a safety stop (``SafetyStop``): a cut
    training returns ``cut`` set and leaves its checkpoint unfinished, so the next call
    resumes it."""
    device = torch.device(device)
    path = checkpoint_path(cache, name, key)
    model = method.model.to(device)
    criterion = getattr(method, "criterion", None)
    params = [p for p in model.parameters() if p.requires_grad]
    batch_size = min(config.batch_size, len(images))
    base_lr = config.lr * batch_size / 128
    optimizer = torch.optim.SGD(params, lr=base_lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    saved = restore_checkpoint(path, key, model, optimizer, (criterion,))
    if saved is not None and saved["done"]:
        result = _result(saved, path, device, cached=True)
        _write_log(log_dir, name, key, result)
        log(f"{name}: trained weights from cache {path.name}")
        return result

    steps_per_epoch = max(1, len(images) // batch_size)
    plan = Plan(config.epochs, steps_per_epoch, batch_size, max_seconds=config.max_seconds)
    total_steps = plan.total_steps
    data = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    labels = None if targets is None else torch.as_tensor(targets, dtype=torch.long).to(device)

    def step_loss(idx: torch.Tensor, info: StepInfo) -> torch.Tensor:
        return method.loss(data[idx], None if labels is None else labels[idx], info)

    def lr_at(step: int) -> float:
        return base_lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))

    def record(state: LoopState) -> dict[str, Any]:
        return {"epoch": state.epoch, "losses": state.history.get("loss", []),
                "wall_s": state.wall_s, "images_seen": state.images_seen, "done": state.done,
                "stopped_by": state.stopped_by, "cut": state.cut}

    def on_epoch_end(epoch: int, state: LoopState) -> None:
        _write_log(log_dir, name, key, _result(record(state), path, device, cached=False))

    resumed = None if saved is None else LoopState.resumed(
        saved, {"loss": saved["losses"]}, steps_per_epoch)
    state = fit_loop(model, optimizer, step_loss, plan, name=name, device=device, lr_at=lr_at,
                     shuffle=seeded_epochs(len(images), config.seed, device),
                     checkpoint=Checkpointing(path, key, name, (criterion,),
                                              lambda _: {"config": asdict(config)}),
                     resumed=resumed, hooks=Hooks(on_epoch_end=on_epoch_end),
                     progress=progress, precision=config.precision)
    result = _result(record(state), path, device, cached=False)
    losses = result.losses
    if result.cut:
        log(result.cut)
    else:
        log(f"{name}: {len(losses)} epochs in {result.wall_s:.1f} s "
            f"({result.images_per_s:.0f} img/s, loss {losses[0]:.3f} -> {losses[-1]:.3f})")
    return result


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


def with_precision(options: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``options`` with ``precision`` resolved for ``device`` (``auto`` or missing: bf16 where
    native, else fp32), so ``config()`` and every key built from it name what trained."""
    return {**options, "precision": resolve_precision(options.get("precision"), device)}


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
        self.device = pick_device(options["device"] or None)
        self.options = options = with_precision(options, self.device)
        self.image_size = int(options["image_size"])
        self.batch_size = batch_size
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
        return embed_images(self.model, batches, self.image_size, self.device)
