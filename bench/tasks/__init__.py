"""The task contract: what a task declares and the one method it implements.

A task subclasses ``Task`` (one level, MTEB-style: metadata as class attributes, one
``evaluate``) and registers with ``@task(name)``. ``check_task`` validates the declaration when
it registers, so a plugin task with a missing or inconsistent field is one plugin error line
naming it, never a failure halfway through a run. The runner reads only what the contract
declares, never an optional attribute with ``getattr``.

Declared (class attributes):

- ``name``, ``description`` (one or two sentences, shown on the report page), ``stage`` (the
  question it answers: ``recall``, ``ranking``, ``image search``, ``transfer`` or ``other``);
- ``needs``: what the dataset must have, in words (``skip_reason`` says when it does not);
- ``metrics``: ``MetricInfo`` entries covering every metric name it emits; ``main_score``: one
  of them, what the report ranks the extractors by and the ladder check reads (on any dataset;
  ``main_score_for(dataset)`` may name a better one where the dataset has what it needs, e.g.
  ``candidate_recall``'s expected click recall with a simulator; the run records the one it
  used in run.json ``main_scores``);
- ``variants``: of ``raw``, ``w`` (whitened) and ``ft`` (fine-tuned); ``seeded``: whether its
  rows depend on the seed; ``defaults``: options per profile name;
- ``reference``: the row every other row is tested against; ``extractor_protocol``: a
  runtime-checkable protocol the extractor must satisfy (the fine-tuning tasks need
  ``bench.core.extractor.BackboneExtractor``), or None;
- ``whitening_labels``: label columns the whitening dimension ``k=auto`` agrees with.

Implemented: ``evaluate(embeddings, dataset, ctx)``; optionally ``main_score_for(dataset)``,
``population(dataset)`` (the rows the whitening is fitted on: all rows by default),
``skip_reason(dataset)``, and ``references(extractors, dataset, options)`` with
``evaluate_reference(reference, embeddings, dataset, ctx)``: rows that belong to no extractor
of the run (ctr's ID-only ranker and its ablations, fine-tuning's scratch backbones). The runner asks for those once, after every
extractor's own cells, with the run's extractors in reference order (the profile's list, then
by name), and evaluates each once per variant and seed under its declared ``label``.

Built-in tasks are the modules of this package, imported on first use (``bench.core.registry``
holds every task, built-in or plugin, beside the extractors and datasets).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from bench.core import registry
from bench.core.cache import Cache
from bench.core.data import LABEL_COLUMNS, Dataset
from bench.core.metric_info import MetricInfo
from bench.embed.embeddings import Embeddings

STAGES = ("recall", "ranking", "image search", "transfer", "other")
VARIANTS = ("raw", "w", "ft")
PROFILE_NAMES = ("quick", "default", "full")


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


class Task:
    """The base every task subclasses; see the module docstring for each field."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    stage: ClassVar[str] = "other"
    needs: ClassVar[tuple[str, ...]] = ("vectors",)
    metrics: ClassVar[tuple[MetricInfo, ...]] = ()
    main_score: ClassVar[str] = ""
    variants: ClassVar[tuple[str, ...]] = ("raw", "w")
    seeded: ClassVar[bool] = False
    defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    reference: ClassVar[str] = "random"
    extractor_protocol: ClassVar[type | None] = None
    whitening_labels: ClassVar[tuple[str, ...]] = LABEL_COLUMNS

    def main_score_for(self, dataset: Dataset) -> str:
        """The main score on ``dataset``: ``main_score``, unless the task has a better score
        that only some datasets can give (it must be a declared score metric too)."""
        return self.main_score

    def population(self, dataset: Dataset) -> np.ndarray:
        """The rows the whitening of the ``w`` variant is fitted on (its train split)."""
        return np.arange(len(dataset))

    def skip_reason(self, dataset: Dataset) -> str | None:
        """None when the dataset can serve the task, else why not (shown to the user)."""
        return None

    def evaluate(self, embeddings: Embeddings, dataset: Dataset,
                 ctx: TaskContext) -> list[dict[str, Any]]:
        """Metric rows: dicts with ``metric`` and ``value`` (optionally ``evidence`` and
        ``cut``); the cell says whose rows they are."""
        raise NotImplementedError

    def references(self, extractors: list[tuple[str, Any]], dataset: Dataset,
                   options: dict[str, Any]) -> list[Reference]:
        """The reference rows of this run (none by default); ``extractors`` are (spec,
        extractor) pairs in reference order."""
        return []

    def evaluate_reference(self, reference: Reference, embeddings: Embeddings | None,
                           dataset: Dataset, ctx: TaskContext) -> list[dict[str, Any]]:
        raise NotImplementedError(f"task {self.name} declares no reference rows")

    def options(self, profile: Any) -> dict[str, Any]:
        """This task's options in ``profile``: its ``defaults`` for the profile, then the
        profile's own section for the task (``Profile.options``)."""
        return profile.options(self.name, self.defaults)


class TaskDeclarationError(ValueError):
    """A task's declaration breaks the contract (found when it registers)."""


def check_task(task: Any, name: str) -> None:
    """Refuse a task whose declaration breaks the contract, naming the field."""
    def refuse(problem: str) -> None:
        raise TaskDeclarationError(f"task {name!r}: {problem}")

    if not isinstance(task, Task):
        refuse(f"{type(task).__name__} does not subclass bench.tasks.Task")
    if task.name != name:
        refuse(f"registered as {name!r} but its name is {task.name!r}")
    if not isinstance(task.description, str) or not task.description.strip():
        refuse("no description (one or two sentences for the report)")
    if task.stage not in STAGES:
        refuse(f"stage {task.stage!r} is not one of {', '.join(STAGES)}")
    if not task.metrics or not all(isinstance(m, MetricInfo) for m in task.metrics):
        refuse("metrics must be a non-empty tuple of MetricInfo")
    if not any(fnmatch.fnmatchcase(task.main_score, m.pattern) for m in task.metrics
               if m.kind == "score"):
        refuse(f"main_score {task.main_score!r} is not covered by a declared score metric")
    if not task.variants or set(task.variants) - set(VARIANTS):
        refuse(f"variants {task.variants!r} must be a non-empty tuple of {', '.join(VARIANTS)}")
    if not isinstance(task.seeded, bool):
        refuse("seeded must be True or False")
    unknown = set(task.defaults) - set(PROFILE_NAMES)
    if not isinstance(task.defaults, dict) or unknown or not all(
            isinstance(v, dict) for v in task.defaults.values()):
        refuse(f"defaults must map profile names ({', '.join(PROFILE_NAMES)}) to option "
               f"dicts{f'; unknown: {sorted(unknown)}' if unknown else ''}")
    protocol = task.extractor_protocol
    if protocol is not None and not getattr(protocol, "_is_runtime_protocol", False):
        refuse("extractor_protocol must be a runtime-checkable Protocol or None")
    own = type(task)
    if own.references is not Task.references and own.evaluate_reference is Task.evaluate_reference:
        refuse("declares references() but not evaluate_reference()")
    if own.evaluate is Task.evaluate:
        refuse("does not implement evaluate()")


def task(name: str) -> Callable[[Callable[[], Task]], Callable[[], Task]]:
    """Register ``factory() -> Task`` under ``name``, after checking what it builds."""
    def register(factory: Callable[[], Task]) -> Callable[[], Task]:
        check_task(factory(), name)
        registry.add_task(name, factory)
        return factory

    return register


def get_task(name: str) -> Task:
    """The task registered as ``name`` (``registry.find_task``)."""
    return registry.find_task(name)


def rows(metrics: dict[str, float], **extra: Any) -> list[dict[str, Any]]:
    """Turn ``{metric: value}`` into task rows."""
    return [{"metric": name, "value": float(value), **extra} for name, value in metrics.items()]
