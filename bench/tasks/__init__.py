"""Tasks score embeddings. Each declares its metadata (name, what it needs, main score) and
implements ``evaluate``; the runner adds run, dataset, extractor, variant and seed to its rows
(a row names only its metric, value and optional evidence and ``cut``).

Two optional declarations, both read by the runner (bench/run/runner.py), never decided inside a task:

- ``extractor_protocol``: a runtime-checkable protocol the extractor must satisfy (the
  fine-tuning tasks need ``bench.core.extractor.BackboneExtractor``); an extractor that does not is
  skipped for the task with that reason.
- ``references(extractors, options)`` and ``evaluate_reference(reference, embeddings, dataset,
  ctx)``: rows that belong to no extractor of the run (ctr's ID-only ranker and its ablations,
  fine-tuning's scratch backbones). The runner asks for them once, after every extractor's own
  cells, with the run's extractors in ``reference order`` (the profile's list, then by name), and
  evaluates each once per variant and seed under its declared ``label``.

A task is found by name in ``TASKS``; modules register with ``@task``. Built-in task modules are
imported lazily by ``get_task`` so a broken or heavy task never slows the others down.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench.core.cache import Cache
from bench.core.data import Dataset
from bench.embed.embeddings import Embeddings

BUILTIN_TASKS = {
    "knn": "bench.tasks.knn",
    "retrieval": "bench.tasks.retrieval",
    "classify": "bench.tasks.classify",
    "finetune_classify": "bench.tasks.finetune",
    "finetune_retrieval": "bench.tasks.finetune",
    "ctr": "bench.tasks.ctr",
}
TASKS: dict[str, Callable[[], Any]] = {}


@dataclass
class TaskContext:
    """What a task may use besides the embeddings: seed, options, the extractor (only tasks
    that declare an ``extractor_protocol`` use it), and the device the run resolved (CUDA when
    present, as for the extractors: ``bench.train.backbones.pick_device``)."""

    seed: int = 0
    variant: str = "raw"
    options: dict[str, Any] = field(default_factory=dict)
    extractor: Any = None
    profile: Any = None
    cache: Cache | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class Reference:
    """Rows a task declares besides the extractors' own, e.g. ``none (ids only)``.

    ``label`` is the extractor column of its rows; ``source`` the extractor spec it is made from
    (its vectors for ctr's ablations, its backbone's architecture for a scratch baseline; None:
    no extractor); ``variants`` the variants it is evaluated for; ``uses_vectors``: whether the
    rows are made from the source's vectors (then a time-capped training of the source marks
    them cut too); ``settings``: what ``evaluate_reference`` needs (JSON-able); ``reference_of``:
    the extractors whose rows are tested against this one instead of the task's ``reference``
    (e.g. the backbones of a scratch baseline's architecture)."""

    label: str
    source: str | None
    variants: tuple[str, ...]
    uses_vectors: bool = False
    settings: tuple[tuple[str, Any], ...] = ()
    reference_of: tuple[str, ...] = ()

    def setting(self, key: str, default: Any = None) -> Any:
        return dict(self.settings).get(key, default)


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
        """Metric rows: dicts with ``metric`` and ``value`` (optionally ``evidence`` and
        ``cut``); the cell says whose rows they are."""
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
