"""The one backbone training loop (``fit_loop``) and what the learned extractors share.

Why one loop: device choice, mixed precision (``backbones.amp_context``: bf16 autocast on CUDA,
fp16 with a loss scaler where bf16 is missing), the progress bar, the per-epoch loss history,
the budget in steps (``Plan``: epochs, optional ``max_steps``; ``max_seconds`` is only a safety
stop, see ``SafetyStop``) and the checkpoint after every epoch are the same for every training.
Its callers supply the model, the optimizer, the learning rate per step, the shuffling and the
loss of one batch, plus optional ``Hooks``:

- ``train``: supervised pretraining (``pretrained``) and the self-supervised methods (``moco_v2``,
  ``swav``; a ``Method`` supplies its model and the loss of one batch, as in lightly's examples),
  SGD with a cosine schedule; ``BackboneEmbedder.fit`` calls it;
- ``bench.train.finetune``: fine-tuning a backbone copy in the classify and retrieval tasks, SGD with
  warm-up and cosine, no checkpoint (results are cached), the safety stop checked every step;
- ``extractors/m6_moe.py``: AdamW over image + title passes, expert statistics per epoch.

Augmentations live in ``bench.train.augment``, the embedding function in ``bench.train.backbones``.

Checkpoints live under ``cache.path("checkpoints", f"{name}-{key}", ".pt")``, keyed by a
fingerprint of the extractor's config, the dataset and the code version. One is written
atomically after every epoch (with every buffer, memory banks too), so an interrupted or cut
training resumes from its last complete epoch (``seeded_epochs``: every epoch's order and
augmentations follow from the seed and the epoch alone) and ends with the weights an
uninterrupted one would have; a finished one is a cache hit that skips training.
``restore_checkpoint`` is the one way back: a checkpoint that cannot be read (truncated, not a
checkpoint, another model) is refused with a message naming the file, moved aside to
``*.corrupt`` and training starts again.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from bench.core.cache import CODE_VERSION, Cache, atomic_path, fingerprint, write_json
from bench.core.extractor import FitContext, source_digest
from bench.train.backbones import (
    amp_context,
    batched_images,
    build_backbone,
    embed_images,
    images_to_tensor,
    pick_device,
)

TRAINING_VERSION = "3"  # bump when a checkpoint's meaning changes (3: steps-only schedule)
CHECKPOINT_FORMAT = 1
NOT_TRAINED = ("device", "max_seconds")  # options that never change a finished training


log = logging.getLogger(__name__).info


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
# Methods and the loop
# --------------------------------------------------------------------------------------------

@dataclass
class StepInfo:
    """What a method's ``loss`` may need besides the batch."""

    step: int            # global optimisation step, 0-based
    total_steps: int     # planned steps (epochs x steps per epoch, at most max_steps)
    epoch: int
    steps_per_epoch: int
    generator: torch.Generator  # for augmentations (on the device), seeded per epoch
    cpu_generator: torch.Generator | None = None  # CPU draws (word dropout), seeded per epoch


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


def restore_checkpoint(path: Path, key: str, model: nn.Module,
                       optimizer: torch.optim.Optimizer | None = None, modules: tuple = (),
                       check: Callable[[dict[str, Any]], None] | None = None
                       ) -> dict[str, Any] | None:
    """The checkpoint of ``key`` at ``path`` loaded into ``model``, ``optimizer`` and the
    buffers of ``model`` and ``modules`` (a loss's memory bank), or None when there is none.
    ``check`` may refuse it (``CheckpointError``). An unusable file is moved aside to
    ``*.corrupt`` with a message naming it, and training starts from scratch."""
    if not path.exists():
        return None
    try:
        state = load_checkpoint(path, key)
        if check is not None:
            check(state)
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        if not isinstance(error, CheckpointError):
            error = CheckpointError(f"checkpoint {path} does not fit the model: {error}")
        bad = path.with_suffix(".corrupt")
        log(f"refusing {error}; moved it to {bad.name} and training from scratch")
        path.replace(bad)
        return None
    restore_buffers(state.get("buffers", {}), model, *modules)
    if not state["done"]:
        log(f"resuming {path.name} after epoch {state['epoch']}")
    return state


# What the loop needs each epoch: (order of the items, generator on the device, CPU generator).
Shuffle = Callable[[int], tuple[torch.Tensor, torch.Generator, torch.Generator]]
# One step's loss: ``loss`` is backpropagated, any other entry is averaged into the history.
StepLoss = Callable[[torch.Tensor, StepInfo], "torch.Tensor | dict[str, torch.Tensor]"]


def seeded_epochs(n: int, seed: int, device: torch.device | str) -> Shuffle:
    """Each epoch's order and generators from (seed, epoch) alone, so a resumed training
    draws exactly what an uninterrupted one would."""
    device = torch.device(device)

    def shuffle(epoch: int) -> tuple[torch.Tensor, torch.Generator, torch.Generator]:
        cpu = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=cpu).to(device)
        return order, torch.Generator(device).manual_seed(seed * 100_003 + epoch + 1), cpu

    return shuffle


def one_stream(n: int, generator: torch.Generator) -> Shuffle:
    """One CPU generator for orders and augmentations of the whole training: for trainings
    that keep no checkpoint (fine-tuning), so never resumed."""
    return lambda epoch: (torch.randperm(n, generator=generator), generator, generator)


@dataclass(frozen=True)
class Plan:
    """The budget in steps: ``epochs`` passes of ``steps_per_epoch`` batches, at most
    ``max_steps`` (0: no limit). ``max_seconds`` is a safety stop, checked after every epoch
    (resumable trainings) or before every step (``stop_within_epoch``)."""

    epochs: int
    steps_per_epoch: int
    batch_size: int
    max_steps: int = 0
    max_seconds: float = 0.0
    stop_within_epoch: bool = False

    @property
    def total_steps(self) -> int:
        planned = self.epochs * self.steps_per_epoch
        return min(planned, self.max_steps) if self.max_steps > 0 else planned

    @property
    def n_epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)


@dataclass
class LoopState:
    """Where a training stands: epochs and steps done, per-epoch means of each loss (and of
    what ``on_epoch_end`` adds), seconds and images of every session, and whether it ended."""

    epoch: int = 0
    steps: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    wall_s: float = 0.0
    images_seen: int = 0
    resumed_wall_s: float = 0.0
    resumed_images: int = 0
    done: bool = False
    cut: str | None = None

    @classmethod
    def resumed(cls, saved: dict[str, Any], history: dict[str, list[float]],
                steps_per_epoch: int) -> LoopState:
        wall, seen = float(saved.get("wall_s", 0.0)), int(saved.get("images_seen", 0))
        return cls(epoch=int(saved["epoch"]), steps=int(saved["epoch"]) * steps_per_epoch,
                   history={k: list(v) for k, v in history.items()}, wall_s=wall,
                   images_seen=seen, resumed_wall_s=wall, resumed_images=seen)

    @property
    def stopped_by(self) -> str:
        return "epochs" if self.done else "max_seconds"

    @property
    def session_images_per_s(self) -> float:
        return ((self.images_seen - self.resumed_images)
                / max(self.wall_s - self.resumed_wall_s, 1e-9))


@dataclass
class Checkpointing:
    """Where the loop saves the model, optimizer and every buffer after each epoch, and what
    the caller adds to each save (``extra``: the loss history, a vocabulary ...)."""

    path: Path
    key: str
    name: str
    modules: tuple = ()  # besides the model, whose buffers are saved (a loss's memory bank)
    extra: Callable[[LoopState], dict[str, Any]] = lambda state: {}


@dataclass
class Hooks:
    """Optional calls into the loop: before an epoch (reset statistics), after an epoch's
    means are in ``state.history`` and before its checkpoint (add to the history, write a
    log), and after every step (``on_step(info, losses)``)."""

    on_epoch_start: Callable[[int], None] | None = None
    on_epoch_end: Callable[[int, LoopState], None] | None = None
    on_step: Callable[[StepInfo, dict[str, torch.Tensor]], None] | None = None


def fit_loop(model: nn.Module, optimizer: torch.optim.Optimizer, step_loss: StepLoss,
             plan: Plan, *, name: str, device: torch.device | str,
             lr_at: Callable[[int], float], shuffle: Shuffle,
             checkpoint: Checkpointing | None = None, resumed: LoopState | None = None,
             hooks: Hooks | None = None, progress: bool = True) -> LoopState:
    """The one backbone training loop (pretraining, self-supervised, fine-tuning, m6_moe).

    Each step sets the learning rate ``lr_at(step)`` (the schedule follows steps, never time),
    computes ``step_loss(batch indices, info)`` under ``amp_context`` and takes an optimizer
    step (the loss scaled where fp16 needs it). Each epoch appends the mean of every returned
    loss to ``state.history``; a loss that is not finite stops training with an error. With
    ``checkpoint``, a checkpoint is saved atomically after every epoch, so a training cut by
    the ``max_seconds`` safety stop (``state.cut``) or killed resumes from ``resumed``."""
    device = torch.device(device)
    hooks = hooks or Hooks()
    state = resumed or LoopState()
    total, per_epoch = plan.total_steps, plan.steps_per_epoch
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda"
                                  and not torch.cuda.is_bf16_supported())
    stop = SafetyStop(plan.max_seconds)
    model.train()
    bar = _progress_bar(total, state.steps, name, progress)
    try:
        for epoch in range(state.epoch, plan.n_epochs):
            started = time.perf_counter()
            if hooks.on_epoch_start is not None:
                hooks.on_epoch_start(epoch)
            order, generator, cpu_generator = shuffle(epoch)
            sums: dict[str, torch.Tensor] = {}
            done_here = 0
            for i in range(min(per_epoch, total - epoch * per_epoch)):
                if plan.stop_within_epoch and stop.reached():
                    break
                step = epoch * per_epoch + i
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step)
                info = StepInfo(step, total, epoch, per_epoch, generator, cpu_generator)
                with amp_context(device):
                    out = step_loss(order[i * plan.batch_size:(i + 1) * plan.batch_size], info)
                losses = out if isinstance(out, dict) else {"loss": out}
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses["loss"]).backward()
                scaler.step(optimizer)
                scaler.update()
                for key, value in losses.items():
                    value = value.detach().float()
                    sums[key] = sums[key] + value if key in sums else value
                done_here += 1
                state.steps += 1
                bar.update(1)
                if hooks.on_step is not None:
                    hooks.on_step(info, losses)
            if done_here:
                means = {key: float(value) / done_here for key, value in sums.items()}
                if not math.isfinite(means["loss"]):
                    raise FloatingPointError(f"{name}: the loss became {means['loss']} in "
                                             f"epoch {epoch + 1}; lower the learning rate (lr=)")
                for key, value in means.items():
                    state.history.setdefault(key, []).append(value)
                bar.set_postfix(loss=f"{means['loss']:.3f}")
            state.wall_s += time.perf_counter() - started
            state.images_seen += done_here * plan.batch_size
            state.epoch = epoch + 1
            state.done = state.steps >= total
            if not state.done and stop.reached():
                state.cut = stop.describe(name, state.epoch, plan.n_epochs)
            if hooks.on_epoch_end is not None:
                hooks.on_epoch_end(epoch, state)
            if checkpoint is not None:
                save_checkpoint(checkpoint.path, {
                    "format": CHECKPOINT_FORMAT, "key": checkpoint.key, "name": checkpoint.name,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "buffers": buffers_of(model, *checkpoint.modules), "epoch": state.epoch,
                    "losses": state.history.get("loss", []), "wall_s": state.wall_s,
                    "images_seen": state.images_seen, "done": state.done,
                    "stopped_by": state.stopped_by, "cut": state.cut,
                    **checkpoint.extra(state)})
            if state.done or state.cut:
                break
    finally:
        bar.close()
    return state


def _progress_bar(total: int, initial: int, name: str, enabled: bool):
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (CI logs, files)
    return tqdm(total=total, initial=initial, desc=f"train {name}", unit="step",
                disable=None if enabled else True, leave=False, mininterval=1.0,
                file=sys.stderr)


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
                     progress=progress)
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
# Extractors whose embedding is a backbone's pooled features
# --------------------------------------------------------------------------------------------

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
        return embed_images(self.model, batches, self.image_size, self.device)
