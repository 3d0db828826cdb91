"""Which rows are deployable extractors and which are references, read from ``run.json``.

Main path: ``run.json`` ``row_kinds`` maps each row label (the ``extractor`` column of
``results.csv``) to ``"extractor"`` (deployable: ranked, may be named best) or ``"reference"``
(the known-answer ladder, ctr's ID-only ranker and ablations, scratch backbones: shown, never
ranked). The runner writes it from the extractor contract (``kind = "reference"``) and the
tasks' declared reference rows.

Fallback, for run folders written before ``row_kinds`` existed (and only for labels it does not
list), a label of task T is a reference when

1. it is a rung of the known-answer ladder (``ladder:clean``, ``ladder:noise=...``,
   ``ladder:random``: the one naming convention the tables always excluded), or
2. it is a reference row recorded for T in ``paired_references`` (the scratch backbones), or
3. T's declared reference (``references[T]``) is a row of its own, i.e. not one of the run's
   ``extractors``, and the label is not one of them either: such a task's rows that no extractor
   produced are its reference rows (ctr: ``none (ids only)`` and the ablations ``pixels [ad]``).
"""

from __future__ import annotations

from typing import Any

from bench.scoring.verdicts import ladder_level

EXTRACTOR, REFERENCE = "extractor", "reference"
TIME_CAP_MARK = " \u2020"  # bench.report.CUT_MARK, appended to a row cut by a time cap


def base_label(label: str) -> str:
    """The ``results.csv`` label behind a table row's extractor (time-cap mark removed)."""
    return str(label).removesuffix(TIME_CAP_MARK)


def row_kind(label: str, task: str, run_info: dict[str, Any] | None) -> str:
    """``EXTRACTOR`` or ``REFERENCE`` for one row label of one task (see the module doc)."""
    run_info = run_info or {}
    label = base_label(label)
    declared = run_info.get("row_kinds")
    if isinstance(declared, dict) and label in declared:
        return REFERENCE if declared[label] == REFERENCE else EXTRACTOR
    return fallback_kind(label, task, run_info)


def fallback_kind(label: str, task: str, run_info: dict[str, Any]) -> str:
    """The documented fallback for run folders without ``row_kinds``."""
    if ladder_level(label) is not None:
        return REFERENCE
    if label in (run_info.get("paired_references") or {}).get(task, {}).values():
        return REFERENCE
    extractors = set(map(str, run_info.get("extractors") or ()))
    own = (run_info.get("references") or {}).get(task)
    if extractors and own is not None and own not in extractors and label not in extractors:
        return REFERENCE
    return EXTRACTOR


def is_reference(label: str, task: str, run_info: dict[str, Any] | None) -> bool:
    return row_kind(label, task, run_info) == REFERENCE
