"""What crosses the boundary between workers and servers, how long an iteration takes, and how
much memory each role holds.

Bytes are counted where the tensors are handed to ``torch.distributed``: the sum of
``numel * element_size`` of every tensor in an RPC's arguments or return value, and of every
buffer passed to an all-reduce. Categories:

- ``image``: image vectors sent from servers to workers (D raw floats in ``store-in-server``,
  the compressed floats in ``ams``);
- ``image_grad``: gradients of those vectors sent back from workers to servers (``ams``);
- ``key``: image ids sent from workers to servers;
- ``model``: gradient buffers of model parameters in all-reduces (the workers' dense part, the
  compression sub-model among workers or, in ``ams``, among servers).
"""

from __future__ import annotations

import resource
import sys
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

CATEGORIES = ("image", "image_grad", "key", "model")


def nbytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (a tensor or nested tuples, lists and dicts of them)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


class Meter:
    """Byte counters per category for the current iteration; ``take`` reads and resets them."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, category: str, obj: Any) -> None:
        if category not in CATEGORIES:
            raise KeyError(f"unknown byte category {category!r}; use {CATEGORIES}")
        self.counts[category] += nbytes(obj)

    def take(self) -> dict[str, int]:
        out = {f"{c}_bytes": int(self.counts.get(c, 0)) for c in CATEGORIES}
        self.counts.clear()
        return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process (``getrusage``), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def held_mb(*holders: Any) -> float:
    """MiB of tensors a role holds: tensors, modules (parameters and buffers) and optimizers
    (their state, e.g. Adam's two moments)."""
    total = 0
    for holder in holders:
        if holder is None:
            continue
        if isinstance(holder, torch.nn.Module):
            total += sum(nbytes(t) for t in (*holder.parameters(), *holder.buffers()))
        elif isinstance(holder, torch.optim.Optimizer):
            total += sum(nbytes(state) for state in holder.state.values())
        else:
            total += nbytes(holder)
    return total / 2**20


def summarize(ranks: Iterable[dict[str, Any]], mode: str) -> dict[str, Any]:
    """One mode's figures from every rank's record: per-iteration totals over ranks, their
    means, and memory per role.

    Iteration totals: bytes summed over all workers (what crossed the boundary that
    iteration) plus the servers' all-reduce bytes; seconds are the slowest worker's. Means
    leave out the first iteration (warm-up) when there are more.
    """
    records = [r for r in ranks if r.get("mode") == mode]
    workers = [r for r in records if r["role"] == "worker"]
    servers = [r for r in records if r["role"] == "server"]
    n = min((len(r["iterations"]) for r in workers), default=0)
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"mode": mode, "iteration": i}
        parts = [r["iterations"][i] for r in workers]
        row["loss"] = parts[0].get("loss", float("nan"))
        row["seconds"] = max(p["seconds"] for p in parts)
        for category in CATEGORIES:
            row[f"{category}_bytes"] = sum(p[f"{category}_bytes"] for p in parts)
        for server in servers:
            steps = server["iterations"]
            if i < len(steps):
                row["model_bytes"] += steps[i]["sync_bytes"]
        row["boundary_bytes"] = row["image_bytes"] + row["image_grad_bytes"] + row["key_bytes"]
        rows.append(row)
    kept = rows[1:] if len(rows) > 1 else rows
    summary: dict[str, Any] = {"iterations": len(rows)}
    for key in ("image_bytes", "image_grad_bytes", "key_bytes", "model_bytes",
                "boundary_bytes"):
        summary[f"{key}_per_iter"] = float(np.mean([r[key] for r in kept])) if kept else 0.0
    summary["iter_s"] = float(np.mean([r["seconds"] for r in kept])) if kept else float("nan")
    for role, group in (("worker", workers), ("server", servers)):
        for key in ("peak_rss_mb", "held_mb"):  # a failed rank may not have recorded them
            values = [r["memory"][key] for r in group if key in r.get("memory", {})]
            if values:
                summary[f"{role}_{key}"] = max(values)
    return {"summary": summary, "iterations": rows}
