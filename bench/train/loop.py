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

Checkpoints: ``bench.train.checkpoint``; options: ``bench.train.options``; the supervised and
self-supervised trainings and ``BackboneEmbedder``: ``bench.train.ssl``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.train.backbones import (
    amp_context,
)
from bench.train.checkpoint import (
    CHECKPOINT_FORMAT,
    buffers_of,
    save_checkpoint,
)


@dataclass
class StepInfo:
    """What a method's ``loss`` may need besides the batch."""

    step: int            # global optimisation step, 0-based
    total_steps: int     # planned steps (epochs x steps per epoch, at most max_steps)
    epoch: int
    steps_per_epoch: int
    generator: torch.Generator  # for augmentations (on the device), seeded per epoch
    cpu_generator: torch.Generator | None = None  # CPU draws (word dropout), seeded per epoch


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
             hooks: Hooks | None = None, progress: bool = True,
             precision: str | None = None) -> LoopState:
    """The one backbone training loop (pretraining, self-supervised, fine-tuning, m6_moe).

    Each step sets the learning rate ``lr_at(step)`` (the schedule follows steps, never time),
    computes ``step_loss(batch indices, info)`` under ``amp_context(device, precision)``
    (``precision``: a resolved training precision, ``bench.train.precision``; None: the
    device's default) and takes an optimizer step (the loss scaled where fp16 needs it). Each epoch appends the mean of every returned
    loss to ``state.history``; a loss that is not finite stops training with an error. With
    ``checkpoint``, a checkpoint is saved atomically after every epoch, so a training cut by
    the ``max_seconds`` safety stop (``state.cut``) or killed resumes from ``resumed``."""
    device = torch.device(device)
    hooks = hooks or Hooks()
    state = resumed or LoopState()
    total, per_epoch = plan.total_steps, plan.steps_per_epoch
    fp16 = (precision == "fp16" if precision is not None
            else device.type == "cuda" and not torch.cuda.is_bf16_supported())
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)
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
                with amp_context(device, precision):
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
