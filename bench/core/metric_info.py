"""What each metric means, declared by the task that emits it (ann-benchmarks style: one place
says which way is better).

A task lists ``metrics``: ``MetricInfo`` entries whose ``pattern`` (a shell-style glob) covers
the names it emits, e.g. ``MetricInfo("*_consistency", unit="query")``. The runner resolves
every emitted name against its task's list (``describe``) and writes the result to run.json
(``metrics``: name -> direction, kind, unit, tasks); the report, ``bench compare`` and the
verdicts read it through ``MetricBook`` instead of guessing from the name. A name no entry
covers is an error of the task, recorded in run.json.

- ``direction``: ``higher`` or ``lower`` is better, or ``none`` (never ranked).
- ``kind``: ``score`` (what extractors are compared on), ``chance`` (the level a random
  embedding reaches, shown beside the score), ``cost`` (time, bytes: lower is better) or
  ``count`` (bookkeeping such as steps) or ``check`` (a property of the harness, such as an
  approximate index's recall of the exact neighbours: no interval, no verdict, never ranked).
- ``unit``: what the bootstrap resamples for the metric's interval (``query``, ``item``,
  ``user``), None where the metric carries no per-unit evidence.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any

DIRECTIONS = ("higher", "lower", "none")
KINDS = ("score", "chance", "cost", "count", "check")


@dataclass(frozen=True)
class MetricInfo:
    pattern: str
    direction: str = "higher"
    kind: str = "score"
    unit: str | None = None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"metric {self.pattern!r}: direction {self.direction!r} is not one "
                             f"of {', '.join(DIRECTIONS)}")
        if self.kind not in KINDS:
            raise ValueError(f"metric {self.pattern!r}: kind {self.kind!r} is not one of "
                             f"{', '.join(KINDS)}")

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)

    def record(self) -> dict[str, Any]:
        return {"direction": self.direction, "kind": self.kind, "unit": self.unit}


def chance(pattern: str) -> MetricInfo:
    return MetricInfo(pattern, "none", "chance")


def cost(pattern: str) -> MetricInfo:
    return MetricInfo(pattern, "lower", "cost")


def count(pattern: str) -> MetricInfo:
    return MetricInfo(pattern, "none", "count")


def check(pattern: str) -> MetricInfo:
    return MetricInfo(pattern, "none", "check")


class UndeclaredMetric(ValueError):
    """A task emitted a metric its ``metrics`` list does not cover."""


def describe(task: Any, name: str) -> dict[str, Any]:
    """The record of ``name`` from the first of ``task.metrics`` that covers it."""
    for info in getattr(task, "metrics", ()):
        if info.matches(name):
            return info.record()
    declared = ", ".join(i.pattern for i in getattr(task, "metrics", ())) or "none"
    raise UndeclaredMetric(f"task {getattr(task, 'name', task)!r} emitted metric {name!r}, "
                           f"which its metrics list does not declare (declared: {declared})")


# Run folders written before tasks declared their metrics: the names alone are all there is.
_LEGACY_LOWER = re.compile(r"(loss|bytes|time|seconds|latency|memory|_s$|_mb$)")
_LEGACY_COUNT = re.compile(r"(steps|count|epochs|^n_|_n$)")


def legacy_record(name: str) -> dict[str, Any]:
    """What an old run folder's metric most likely meant (from its name)."""
    lowered = name.lower()
    if name == "chance" or name.endswith("_chance"):
        return {"direction": "none", "kind": "chance", "unit": None}
    if name.startswith("index_"):
        return {"direction": "none", "kind": "check", "unit": None}
    if _LEGACY_COUNT.search(lowered):
        return {"direction": "none", "kind": "count", "unit": None}
    if _LEGACY_LOWER.search(lowered):
        return {"direction": "lower", "kind": "cost", "unit": None}
    return {"direction": "higher", "kind": "score", "unit": None}


class MetricBook:
    """Metric metadata of one run (run.json ``metrics``); names it lacks (an old run folder)
    fall back to ``legacy_record``."""

    def __init__(self, records: dict[str, dict[str, Any]] | None = None):
        self.records = dict(records or {})

    @classmethod
    def from_run_info(cls, run_info: dict[str, Any] | None) -> MetricBook:
        return cls((run_info or {}).get("metrics"))

    def get(self, name: str) -> dict[str, Any]:
        return self.records.get(name) or legacy_record(name)

    def lower_is_better(self, name: str) -> bool:
        return self.get(name)["direction"] == "lower"

    def is_chance(self, name: str) -> bool:
        return self.get(name)["kind"] == "chance"

    def is_check(self, name: str) -> bool:
        return self.get(name)["kind"] == "check"

    def is_ranked(self, name: str) -> bool:
        """Scores and costs are ranked; chance levels and counts are shown, never ranked."""
        record = self.get(name)
        return record["direction"] != "none" and record["kind"] in ("score", "cost")
