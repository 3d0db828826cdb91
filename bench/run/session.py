"""One session of a run: its rows, cells, errors and timings, written after every cell.

``Run`` holds what this session computed on top of an earlier session's (``bench.run.resume``),
and writes ``results.csv`` and ``run.json`` through ``bench.run.folder`` after every cell, so an
error or an interruption never loses what was computed before it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import traceback
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core import registry
from bench.core.config import Profile
from bench.embed.embeddings import Embeddings
from bench.run.folder import (
    RESULT_COLUMNS,
    declare_metrics,
    environment,
    write_results,
    write_run_json,
)
from bench.run.prepare import Prepared
from bench.run.resume import (
    CUT,
    DONE,
    FAILED,
    PENDING,
    Cell,
    merge_rows,
)
from bench.scoring import verdicts

log = logging.getLogger(__name__).info


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a run, after ``run.json`` was marked ``interrupted``."""

    def __init__(self, run: Run):
        super().__init__(f"run {run.run_id} interrupted")
        self.run = run


# what an earlier session recorded per extractor, kept when a resumed session skips it
CARRIED_INFO = ("whitening", "extractor_configs", "embeddings", "embeddings_fingerprints",
                "metrics", "paired_references", "row_kinds", "task_info")


class Run:
    """One session of a run: this session's rows, cells, errors and timings, on top of an
    earlier session's (``previous``), written to ``results/<run-id>/`` after every cell."""

    def __init__(self, prepared: Prepared):
        self.prepared = prepared
        self.spec = spec = prepared.spec
        self.run_id, self.dir, self.dataset = prepared.run_id, prepared.dir, prepared.dataset
        self.previous = prepared.previous
        self.rows: list[dict[str, Any]] = []  # this session's
        self.errors: list[dict[str, str]] = []  # this session's
        self.skipped: list[dict[str, str]] = []
        old = self.previous.info if self.previous else {}
        self.cells: dict[Cell, dict[str, Any]] = dict(self.previous.cells) if self.previous else {}
        self.timings: dict[str, dict[str, float]] = dict(old.get("timings", {}))
        self.started = time.perf_counter()
        self.started_at = dt.datetime.now().isoformat(timespec="seconds")
        self.earlier_s = float(old.get("total_s", 0.0))
        self.sessions: list[dict[str, Any]] = list(old.get("sessions", []))
        self.extractors = list(dict.fromkeys([*old.get("extractors", []), *spec.extractors]))
        self.tasks = list(dict.fromkeys([*old.get("tasks", []), *spec.tasks]))
        self.seeds = max(len(old.get("seeds", [])), spec.seeds)
        self.status = "running"
        self.computed = 0
        self.not_started = [text for text, _ in prepared.extractors]  # not embedded yet
        self.info: dict[str, Any] = {"dataset_fingerprint": self.dataset.fingerprint,
                                     "dataset_content": self.dataset.info.get("content"),
                                     "dataset_size": len(self.dataset),
                                     "cache": str(prepared.cache.root),
                                     "plugins": list(spec.plugins),
                                     **{key: old[key] for key in CARRIED_INFO if old.get(key)}}
        self.info["task_info"] = {**self.info.get("task_info", {}),
                                  **{name: declared(task, self.dataset)
                                     for name, task in prepared.tasks}}
        self.environment = environment()  # once: save() runs after every cell
        self.device = run_device(spec.profile)  # what tasks train on (ctx.device)
        # extractors ready for reference rows: (extractor, embeddings or their cache file)
        self.sources: dict[str, tuple[Any, Embeddings | Path]] = {}
        self.fitted: set[str] = set()  # specs fitted in this session
        self.active: list[tuple[str, Any]] = []  # tasks the dataset can serve
        for name, task in prepared.tasks:
            reason = task.skip_reason(self.dataset)
            if reason:
                self.skipped.append({"task": name, "reason": reason})
                log(f"skipping task {name}: {reason}")
            else:
                self.active.append((name, task))
        for _, extractor in prepared.extractors:  # tasks an extractor cannot serve, and why
            for name, task in self.active:
                gap = protocol_gap(task, extractor)
                if gap:
                    self.skipped.append({"task": name, "extractor": extractor.name,
                                         "reason": gap})
                    log(f"skipping task {name} for {extractor.name}: {gap}")

    # -- cells --

    def seeds_of(self, task: Any) -> range:
        """The run's seeds for a seeded task, capped by its ``max_seeds`` option (a profile
        may give a costly task fewer seeds: its intervals then rest on the bootstrap alone)."""
        if not task.seeded:
            return range(1)
        options = task.options(self.spec.profile)
        return range(min(self.spec.seeds, int(options.get("max_seeds", self.spec.seeds))))

    def spend(self, label: str, key: str, start: float) -> None:
        """Add the seconds since ``start`` to run.json ``timings[label][key]``."""
        spent = self.timings.setdefault(label, {})
        spent[key] = spent.get(key, 0.0) + time.perf_counter() - start

    def tasks_for(self, extractor: Any) -> list[tuple[str, Any]]:
        """The active tasks this extractor can serve: a task that declares an
        ``extractor_protocol`` (fine-tuning needs ``BackboneExtractor``) skips the others."""
        return [(name, task) for name, task in self.active
                if protocol_gap(task, extractor) is None]

    def extractor_done(self, spec_text: str, extractor: Any) -> bool:
        """True when an earlier session finished every cell this session asks of the
        extractor (so it is neither fitted nor embedded again)."""
        if self.previous is None:
            return False
        wanted = {(name, seed) for name, task in self.tasks_for(extractor)
                  for seed in self.seeds_of(task)}
        known = [cell for cell in self.cells if cell.extractor == spec_text]
        have = {(cell.task, cell.seed) for cell in known}
        return wanted <= have and all(self.cells[cell]["state"] == DONE for cell in known
                                      if (cell.task, cell.seed) in wanted)

    def is_done(self, cell: Cell) -> bool:
        return self.cells.get(cell, {}).get("state") == DONE

    def plan(self, cell: Cell, name: str) -> None:
        if cell not in self.cells:
            self.cells[cell] = {**vars(cell), "name": name, "state": PENDING}

    def cell_failed(self, cell: Cell, name: str) -> None:
        self.cells[cell] = {**vars(cell), "name": name, "state": FAILED}
        self.save()

    def add_cell(self, cell: Cell, name: str, dataset: str, task_rows: list[dict[str, Any]],
                 fit_cut: str | None = None) -> None:
        """A finished cell's rows, all under the cell's ``name`` (the extractor's, or a
        reference's label), variant and seed. A row its time cap cut short (the task's
        ``cut``, or every row made from the embeddings of a cut ``fit``) marks the cell
        ``cut``: kept, shown with a mark, and computed again by the next session."""
        self.add_rows(dataset, name, cell.variant, cell.task, cell.seed, task_rows)
        self.declare_metrics(cell.task, task_rows)
        cuts: list[dict[str, Any]] = []
        for row in task_rows:
            reason = row.get("cut") or fit_cut
            note = {"extractor": name, "variant": cell.variant, "task": cell.task,
                    "seed": cell.seed, "reason": reason}
            if reason and note not in cuts:
                cuts.append(note)
        self.cells[cell] = {**vars(cell), "name": name, "state": CUT if cuts else DONE,
                            **({"cut": cuts} if cuts else {})}
        self.computed += 1
        self.save()

    # -- records --

    def error(self, where: str, error: BaseException) -> None:
        log(f"error in {where}: {type(error).__name__}: {error}")
        self.errors.append({"where": where, "error": f"{type(error).__name__}: {error}",
                            "traceback": traceback.format_exc(limit=6)})

    def add_rows(self, dataset: str, extractor: str, variant: str, task: str, seed: int,
                 task_rows: list[dict[str, Any]]) -> None:
        """Append the task's rows under the cell's extractor, variant and seed; their evidence
        (for intervals) goes to ``evidence/``."""
        evidence: dict[str, Any] = {}
        for row in task_rows:
            self.rows.append({"run": self.run_id, "dataset": dataset, "extractor": extractor,
                              "variant": variant, "task": task, "metric": row["metric"],
                              "seed": seed, "value": float(row["value"])})
            if row.get("evidence") is not None:
                evidence[row["metric"]] = row["evidence"]
        if evidence:
            verdicts.save_evidence(self.dir, task, extractor, variant, seed, evidence)

    def declare_metrics(self, task_name: str, task_rows: list[dict[str, Any]]) -> None:
        """run.json ``metrics``: what each emitted metric means, from its task's ``metrics``
        list; a metric the task does not declare is an error of the task (recorded, and
        described from its name so the report still shows it)."""
        book = self.info.setdefault("metrics", {})
        task = dict(self.active).get(task_name)
        names = [row["metric"] for row in task_rows]
        for problem in declare_metrics(book, task_name, task, names):
            self.error(f"task {task_name}", problem)

    def results(self) -> pd.DataFrame:
        """Every row of the run: the earlier sessions' and this one's, deduplicated."""
        previous = self.previous.rows if self.previous else pd.DataFrame()
        return merge_rows(previous, self.rows, RESULT_COLUMNS)

    def missing(self) -> list[dict[str, Any]]:
        return [record for record in self.cells.values() if record["state"] != DONE]

    def finish(self, status: str | None = None) -> None:
        self.status = status or ("failed" if self.errors else "complete")
        self.sessions.append({"started": self.started_at, "status": self.status,
                              "seconds": round(time.perf_counter() - self.started, 3),
                              "cells_computed": self.computed, "errors": len(self.errors),
                              "command": self.spec.command})
        self.save()

    def save(self, results: bool = True) -> None:
        """``results.csv`` (unless ``results`` is False: a full disk refused it) and
        ``run.json``."""
        if results:
            write_results(self.dir, self.results())
        spec = self.spec
        write_run_json(self.dir, {
            "run": self.run_id, "status": self.status, "profile": spec.profile.name,
            "dataset": spec.dataset, "dataset_options": spec.dataset_options,
            "extractors": self.extractors, "tasks": self.tasks,
            "seeds": list(range(self.seeds)), "command": spec.command,
            "config": {"train": spec.profile.train, "task_options": spec.profile.task_options},
            "precision": spec.profile.precision,
            "run_config": self.prepared.config,
            "cells": list(self.cells.values()), "missing": len(self.missing()),
            "not_started": self.not_started,
            "time_capped": [c for r in self.cells.values() for c in r.get("cut", [])],
            "timings": self.timings,
            "total_s": self.earlier_s + time.perf_counter() - self.started,
            "errors": self.errors, "skipped": self.skipped, "sessions": self.sessions,
            "plugin_errors": [str(e) for e in registry.load_errors],
            "environment": self.environment, "metrics": {}, **self.info})


def protocol_gap(task: Any, extractor: Any) -> str | None:
    """Why the extractor cannot serve the task (None when it can): the task's declared
    ``extractor_protocol``, checked at run time (``isinstance`` on a runtime-checkable
    protocol such as ``bench.core.extractor.BackboneExtractor``)."""
    protocol = task.extractor_protocol
    if protocol is None or isinstance(extractor, protocol):
        return None
    return (f"task {task.name} needs an extractor that satisfies {protocol.__name__} (see "
            f"bench/core/extractor.py); {extractor.name} does not")


def declared(task: Any, dataset: Any) -> dict[str, Any]:
    """What run.json records of a task's declaration, for the report (which reads files only);
    the main score is the one the task names for this dataset (``main_score_for``)."""
    return {"description": task.description, "stage": task.stage,
            "main_score": task.main_score_for(dataset), "reference": task.reference}


def run_device(profile: Profile) -> str:
    """The device tasks train on: the profile's ``device`` (train section ``*``) when set, else
    CUDA when present (``pick_device``, as the extractors choose)."""
    from bench.train.backbones import pick_device

    return str(pick_device(profile.train.get("*", {}).get("device") or None))
