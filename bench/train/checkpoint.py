"""Checkpoints of trainings: keyed, written atomically after every epoch, restored or refused.

Checkpoints live under ``cache.path("checkpoints", f"{name}-{key}", ".pt")``, keyed by a
fingerprint of the extractor's config, the dataset and the code version. One is written
atomically after every epoch (with every buffer, memory banks too), so an interrupted or cut
training resumes from its last complete epoch and ends with the weights an uninterrupted one
would have; a finished one is a cache hit that skips training. ``restore_checkpoint`` is the
one way back: a checkpoint that cannot be read (truncated, not a checkpoint, another model) is
refused with a message naming the file, moved aside to ``*.corrupt`` and training starts again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.core.cache import CODE_VERSION, Cache, atomic_path, fingerprint

log = logging.getLogger(__name__).info


TRAINING_VERSION = "3"  # bump when a checkpoint's meaning changes (3: steps-only schedule)


CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message names the file and why."""


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
