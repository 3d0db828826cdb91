"""Tasks score embeddings. Each declares its metadata (name, what it needs, main score) and
implements ``evaluate``; the runner adds run, dataset, extractor, variant and seed to its rows.

A task is found by name in ``TASKS``; modules register with ``@task``. Built-in task modules are
imported lazily by ``get_task`` so a broken or heavy task never slows the others down.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.cache import Cache
from bench.data import Dataset
from bench.embeddings import Embeddings

BUILTIN_TASKS = {
    "knn": "bench.tasks.knn",
    "retrieval": "bench.tasks.retrieval",
    "classify": "bench.tasks.classify",
    "ctr": "bench.tasks.ctr",
}
TASKS: dict[str, Callable[[], Any]] = {}


@dataclass
class TaskContext:
    """What a task may use besides the embeddings: seed, options, the extractor (for fine-tuning)."""

    seed: int = 0
    variant: str = "raw"
    options: dict[str, Any] = field(default_factory=dict)
    extractor: Any = None
    profile: Any = None
    cache: Cache | None = None
    device: str = "cpu"
    artifacts_dir: Path | None = None


class Task(Protocol):
    name: str
    main_score: str
    needs: tuple[str, ...]
    seeded: bool
    variants: tuple[str, ...]

    def skip_reason(self, dataset: Dataset) -> str | None:
        """None when the dataset can serve the task, else why not (shown to the user)."""
        ...

    def evaluate(self, embeddings: Embeddings, dataset: Dataset,
                 ctx: TaskContext) -> list[dict[str, Any]]:
        """Metric rows: dicts with ``metric`` and ``value`` (and optionally ``variant`` or
        ``extractor`` overrides, e.g. a ``scratch`` baseline row)."""
        ...


def task(name: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    def register(factory: Callable[[], Any]) -> Callable[[], Any]:
        TASKS[name] = factory
        return factory

    return register


def get_task(name: str) -> Any:
    if name not in TASKS and name in BUILTIN_TASKS:
        importlib.import_module(BUILTIN_TASKS[name])
    if name not in TASKS:
        known = ", ".join(sorted(set(TASKS) | set(BUILTIN_TASKS)))
        raise KeyError(f"unknown task {name!r}; known: {known}")
    return TASKS[name]()


def rows(metrics: dict[str, float], **extra: Any) -> list[dict[str, Any]]:
    """Turn ``{metric: value}`` into task rows."""
    return [{"metric": name, "value": float(value), **extra} for name, value in metrics.items()]
