"""One benchmark run: dataset -> extractors (fit, embed, cached) -> variants -> tasks -> results.

``prepare_run`` checks everything a user can get wrong (seeds, names, options, the dataset, the
run folder, an earlier session's settings) before anything runs, and raises ``RunRefused`` with
one line (recorded in the run folder). ``execute_run`` then evaluates the (extractor, variant,
task, seed) cells an earlier session of the run id has not finished (``bench.run.resume``). Results
and ``run.json`` are written atomically after every cell, so an error in one extractor or task
(recorded in ``run.json``) or an interruption (``status: interrupted``) never loses what was
computed before it.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.core import registry
from bench.core.cache import (
    CODE_VERSION,
    Cache,
    DamagedFileError,
    atomic_path,
    fingerprint,
    quarantine,
    read_cached,
    write_json,
    write_text,
)
from bench.core.config import Profile
from bench.core.data import Dataset
from bench.core.extractor import BackboneExtractor, FitContext, code_digest
from bench.core.metric_info import MetricBook
from bench.embed.embeddings import Embeddings
from bench.embed.store import embed_resumable
from bench.run.folder import (
    RESULT_COLUMNS,
    declare_metrics,
    environment,
    write_results,
    write_run_json,
)
from bench.run.pictures import RunArtifacts
from bench.run.resume import (
    CUT,
    DONE,
    FAILED,
    PENDING,
    Cell,
    Previous,
    load_previous,
    merge_rows,
    run_config,
)
from bench.scoring import verdicts
from bench.tasks import Reference, TaskContext
from bench.vectors import variants

ROW_OWNER = {"extractor", "variant", "seed"}  # the cell's, never a task row's


@dataclass
class RunSpec:
    profile: Profile
    dataset: str = "homestead"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    extractors: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    seeds: int = 1
    out_root: Path = Path("results")
    run_id: str | None = None
    plugins: tuple[str, ...] = ()
    report: bool = True
    command: dict[str, Any] = field(default_factory=dict)  # the CLI request, for --resume
    reference: str | None = None  # the row every other is tested against (default per task)


class RunRefused(ValueError):
    """Bad input found before anything ran: one line for the user (exit status 2). The run
    folder records it when it could be written (``run_dir``)."""

    def __init__(self, message: str, run_dir: Path | None = None):
        super().__init__(message)
        self.run_dir = run_dir


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a run, after ``run.json`` was marked ``interrupted``."""

    def __init__(self, run: Run):
        super().__init__(f"run {run.run_id} interrupted")
        self.run = run


# What bad input raises while a run is prepared (DatasetError, EmbeddingError, SpecError and
# ResumeError are ValueErrors; a missing file or an unwritable folder an OSError).
USER_ERRORS = (ValueError, OSError, KeyError)


log = logging.getLogger(__name__).info


def embeddings_key(extractor: Any, dataset: Dataset) -> str:
    """What cached embeddings depend on: the data, the extractor's name and ``config()``, and
    the code (the plugin's source files and the project's extractor code, ``code_digest``)."""
    return fingerprint(dataset.fingerprint, extractor.name, extractor.config(), CODE_VERSION,
                       code_digest(extractor))


def embeddings_path(extractor: Any, dataset: Dataset, cache: Cache,
                    key: str | None = None) -> Path:
    """Where the cached embeddings live (``key``: ``embeddings_key``, when already computed:
    it hashes the plugin's source files)."""
    key = key or embeddings_key(extractor, dataset)
    return cache.path("embeddings", f"{dataset.name.replace(':', '_')}-{key}", ".npz")


def embeddings_meta(extractor: Any, dataset: Dataset, key: str | None) -> dict[str, Any]:
    """What cached embeddings record; ``key`` None for those of a cut training (tasks then
    cache nothing made from them)."""
    return {"extractor": extractor.name, "config": extractor.config(), "fingerprint": key,
            "dataset": dataset.name, "created": dt.datetime.now().isoformat(timespec="seconds"),
            "source": extractor.name}


def embed_cached(extractor: Any, dataset: Dataset, cache: Cache, log_dir: Path) -> tuple[Embeddings, dict[str, float]]:
    """Fit (the extractor caches its own weights) and embed every dataset row, cached. A
    training its time cap cut short (``fit_cut``) is never cached as if it had finished."""
    timings: dict[str, float] = {}
    key = embeddings_key(extractor, dataset)
    path = embeddings_path(extractor, dataset, cache, key)
    ctx = FitContext(cache=cache, seed=0, log_dir=log_dir)
    cached = read_cached(path, Embeddings.load)  # a damaged file is moved aside, recomputed
    if cached is not None:
        log(f"{extractor.name}: embeddings from cache {path.name}")
        timings["cached"] = 1.0
        if isinstance(extractor, BackboneExtractor):
            # tasks may fine-tune backbone(): load its trained weights (a checkpoint cache hit)
            start = time.perf_counter()
            extractor.fit(dataset, ctx)
            timings["fit_s"] = time.perf_counter() - start
        keep_train_log(path, log_dir, restore=True)
        cached.meta["cache_file"] = str(path)
        return cached, timings
    log(f"{extractor.name}: fit and embed {len(dataset)} items")
    start = time.perf_counter()
    extractor.fit(dataset, ctx)
    timings["fit_s"] = time.perf_counter() - start
    start = time.perf_counter()
    cut = getattr(extractor, "fit_cut", None)
    meta = embeddings_meta(extractor, dataset, None if cut else key)
    if cut:  # embedded in one go, never stored
        embeddings = Embeddings(dataset.ids, extractor.embed(dataset, np.arange(len(dataset))),
                                meta)
    else:  # shard by shard beside ``path``: a stopped run resumes at the next unfinished shard
        embeddings = embed_resumable(extractor, dataset, path, meta)
    timings["embed_s"] = time.perf_counter() - start
    if embeddings.dim != extractor.dim:
        log(f"{extractor.name}: declared dim {extractor.dim} but produced {embeddings.dim}")
    if cut:
        log(f"{extractor.name}: embeddings of a cut training are not cached")
        return embeddings, timings
    keep_train_log(path, log_dir, restore=False)
    embeddings.meta["cache_file"] = str(path)
    return embeddings, timings


def keep_train_log(embeddings_path: Path, log_dir: Path, restore: bool) -> None:
    """Keep the extractor's ``train_log.json`` beside its cached embeddings, and put it back
    into the run folder on a cache hit, so loss curves survive runs that skip training."""
    cached = embeddings_path.with_suffix(".train_log.json")
    current = Path(log_dir) / "train_log.json"
    source, target = (cached, current) if restore else (current, cached)
    if source.is_file() and not (restore and target.is_file()):
        write_text(target, source.read_text(encoding="utf-8"))


@dataclass
class Prepared:
    """A run that passed every check: its folder, settings, earlier session, data, extractors
    (spec text, extractor) and tasks (name, task)."""

    spec: RunSpec
    run_id: str
    dir: Path
    cache: Cache
    config: dict[str, Any]
    previous: Previous | None
    dataset: Dataset
    extractors: list[tuple[str, Any]]
    tasks: list[tuple[str, Any]]


def prepare_run(spec: RunSpec, cache: Cache | None = None) -> Prepared:
    """Check the request before anything runs. Bad input raises ``RunRefused`` (one line,
    recorded in the run folder's ``run.json`` when the folder can be written)."""
    cache = cache or Cache()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id = spec.run_id or f"{stamp}-{spec.profile.name}-{spec.dataset.split(':')[0]}"
    run_dir = Path(spec.out_root) / run_id
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as error:
        raise RunRefused(f"cannot write the run folder {run_dir}: "
                         f"{error.strerror or error}") from None
    try:
        return _prepare(spec, cache, run_id, run_dir)
    except USER_ERRORS as error:
        message = describe_error(error)
        record_refusal(run_dir, spec, run_id, message)
        raise RunRefused(message, run_dir) from error
    except Exception as error:  # a bug, not bad input: keep its traceback in the run folder
        record_refusal(run_dir, spec, run_id, describe_error(error), status="crashed",
                       trace=traceback.format_exc())
        raise


def _prepare(spec: RunSpec, cache: Cache, run_id: str, run_dir: Path) -> Prepared:
    if int(spec.seeds) < 1:
        raise registry.SpecError(f"--seeds must be at least 1, got {spec.seeds}")
    registry.load_plugins(spec.plugins)
    for problem in registry.load_errors:
        log(str(problem))
    config = run_config(spec.profile, spec.dataset, spec.dataset_options)
    previous = load_previous(run_dir, config)
    tasks = [(name, registry.find_task(name)) for name in dict.fromkeys(spec.tasks)]
    try:  # bad whitening or ``variants`` options are refused before anything runs
        variants.check_options(spec.profile.whitening)
        for name, task in tasks:
            variants.scheduled(task, spec.profile.options(name, getattr(task, "defaults", None)))
    except ValueError as error:
        raise registry.SpecError(str(error)) from None
    extractors = [(text, registry.build_extractor(text, spec.profile))
                  for text in dict.fromkeys(spec.extractors)]
    names = [extractor.name for _, extractor in extractors]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise registry.SpecError(f"extractor {twice[0]!r} is requested twice (its rows would "
                                 "mix); give each spec once")
    dataset = build_dataset(spec, cache)
    for _, extractor in extractors:
        validate = getattr(extractor, "validate", None)
        if callable(validate):
            validate(dataset)
    return Prepared(spec, run_id, run_dir, cache, config, previous, dataset, extractors, tasks)


def build_dataset(spec: RunSpec, cache: Cache) -> Dataset:
    """The run's dataset. A damaged file in the cache that a dataset plugin reads with
    ``load_npz`` is moved aside and the dataset built again, once."""
    name = spec.dataset.split(":")[0]
    try:
        return registry.build_dataset(name, cache, **spec.dataset_options)
    except DamagedFileError as error:
        path = error.path
        if path is None or not path.resolve().is_relative_to(Path(cache.root).resolve()):
            raise
        quarantine(path, error)
        return registry.build_dataset(name, cache, **spec.dataset_options)


def describe_error(error: BaseException) -> str:
    """One line: our errors' own messages, others prefixed with their type."""
    from bench.core.data import DatasetError
    from bench.embed.embeddings import EmbeddingError
    from bench.run.resume import ResumeError

    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    text = " ".join(text.split())
    if isinstance(error, DatasetError | EmbeddingError | ResumeError | registry.SpecError):
        return text
    return f"{type(error).__name__}: {text}"


def record_refusal(run_dir: Path, spec: RunSpec, run_id: str, message: str,
                   status: str = "invalid", trace: str | None = None) -> None:
    """Write why a run was refused into its folder: a new ``run.json`` with ``status``, or,
    beside an earlier session's record, one more entry in its ``refusals``."""
    entry = {"time": dt.datetime.now().isoformat(timespec="seconds"), "error": message,
             "command": spec.command, **({"traceback": trace} if trace else {})}
    path = run_dir / "run.json"
    try:
        import json

        info = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    except (OSError, ValueError):
        info = None
    if isinstance(info, dict) and info.get("run_config") is not None:
        info.setdefault("refusals", []).append(entry)
    else:
        info = {"run": run_id, "status": status, "error": message, "command": spec.command,
                "profile": spec.profile.name, "dataset": spec.dataset,
                "extractors": list(spec.extractors), "tasks": list(spec.tasks),
                "refusals": [entry]}
    try:
        write_json(path, info)
    except OSError:
        pass  # the message on stderr is all there is


# what an earlier session recorded per extractor, kept when a resumed session skips it
CARRIED_INFO = ("whitening", "extractor_configs", "embeddings", "embeddings_fingerprints",
                "metrics", "paired_references")


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
                                     "dataset_size": len(self.dataset),
                                     "cache": str(prepared.cache.root),
                                     "plugins": list(spec.plugins),
                                     **{key: old[key] for key in CARRIED_INFO if old.get(key)}}
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
        options = self.spec.profile.options(task.name, getattr(task, "defaults", None))
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

    def save(self) -> None:
        write_results(self.dir, self.results())
        spec = self.spec
        write_run_json(self.dir, {
            "run": self.run_id, "status": self.status, "profile": spec.profile.name,
            "dataset": spec.dataset, "dataset_options": spec.dataset_options,
            "extractors": self.extractors, "tasks": self.tasks,
            "seeds": list(range(self.seeds)), "command": spec.command,
            "config": {"train": spec.profile.train, "task_options": spec.profile.task_options},
            "run_config": self.prepared.config,
            "cells": list(self.cells.values()), "missing": len(self.missing()),
            "not_started": self.not_started,
            "time_capped": [c for r in self.cells.values() for c in r.get("cut", [])],
            "timings": self.timings,
            "total_s": self.earlier_s + time.perf_counter() - self.started,
            "errors": self.errors, "skipped": self.skipped, "sessions": self.sessions,
            "plugin_errors": [str(e) for e in registry.load_errors],
            "environment": self.environment, "metrics": {}, **self.info})


def cell_rows(task_name: str, task_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task's rows, checked: a row belongs to its cell and never names its own extractor,
    variant or seed (rows of no extractor are the task's declared ``references``)."""
    for row in task_rows:
        claimed = sorted(ROW_OWNER & set(row))
        if claimed:
            raise ValueError(f"task {task_name!r} returned a row naming its own "
                             f"{', '.join(claimed)}; a row belongs to its cell (declare "
                             "reference rows with the task's references())")
    return task_rows


def protocol_gap(task: Any, extractor: Any) -> str | None:
    """Why the extractor cannot serve the task (None when it can): the task's declared
    ``extractor_protocol``, checked at run time (``isinstance`` on a runtime-checkable
    protocol such as ``bench.core.extractor.BackboneExtractor``)."""
    protocol = getattr(task, "extractor_protocol", None)
    if protocol is None or isinstance(extractor, protocol):
        return None
    return (f"task {task.name} needs an extractor that satisfies {protocol.__name__} (see "
            f"bench/core/extractor.py); {extractor.name} does not")


def run_device(profile: Profile) -> str:
    """The device tasks train on: the profile's ``device`` (train section ``*``) when set, else
    CUDA when present (``pick_device``, as the extractors choose)."""
    from bench.train.backbones import pick_device

    return str(pick_device(profile.train.get("*", {}).get("device") or None))


def evaluate_tasks(run: Run, spec_text: str, extractor: Any, embeddings: Embeddings,
                   cache: Cache) -> None:
    """Every cell of this extractor that is not done yet: (variant, task, seed). Each task sees
    its own variants (whitening fitted on the train rows of the task's population); a task
    whose ``extractor_protocol`` the extractor does not satisfy is skipped with that reason."""
    fit_cut = getattr(extractor, "fit_cut", None)
    for name, task in run.active:
        if protocol_gap(task, extractor):
            continue  # said once, when the run began (Run.__init__)
        options = run.spec.profile.options(name, getattr(task, "defaults", None))
        wanted = variants.scheduled(task, options)
        cells = [Cell(spec_text, variant, name, seed) for variant in wanted
                 for seed in run.seeds_of(task)]
        for cell in cells:
            run.plan(cell, extractor.name)
        todo = [cell for cell in cells if not run.is_done(cell)]
        if not todo:
            continue
        start = time.perf_counter()
        by_variant = task_variants(run, extractor, embeddings, task, wanted)
        evaluate_cells(run, name, extractor.name, f"on {extractor.name}", todo, by_variant,
                       lambda vectors, ctx, task=task: task.evaluate(vectors, run.dataset, ctx),
                       TaskContext(options=options, extractor=extractor,
                                   profile=run.spec.profile, cache=cache, device=run.device),
                       fit_cut)
        if options.get("whitening_sweep") and "w" in by_variant:
            add_sweep(run, extractor, embeddings, task, options, cache)
        run.spend(extractor.name, f"{name}_s", start)


def evaluate_cells(run: Run, name: str, label: str, what: str, todo: list[Cell],
                   by_variant: dict[str, Embeddings] | None,
                   evaluate: Callable[[Embeddings | None, TaskContext], list[dict[str, Any]]],
                   context: TaskContext, fit_cut: str | None) -> None:
    """Evaluate each cell under ``label`` (an extractor's name or a reference's) with the
    ``context`` set to the cell's seed and variant; a failed cell is an error that leaves the
    others running. ``by_variant`` None: the rows read no vectors (all variants allowed);
    else a cell whose variant it lacks is dropped (e.g. no ``w`` with too few train rows)."""
    for cell in todo:
        if by_variant is not None and cell.variant not in by_variant:
            run.cells.pop(cell, None)
            continue
        ctx = replace(context, seed=cell.seed, variant=cell.variant)
        try:
            rows = cell_rows(name, evaluate((by_variant or {}).get(cell.variant), ctx))
        except Exception as error:  # noqa: BLE001
            run.error(f"task {name} {what}/{cell.variant} seed {cell.seed}", error)
            run.cell_failed(cell, label)
            continue
        run.add_cell(cell, label, run.dataset.name, rows, fit_cut)


def task_variants(run: Run, extractor: Any, embeddings: Embeddings, task: Any,
                  wanted: tuple[str, ...]) -> dict[str, Embeddings]:
    """The ``wanted`` variants (``raw``, ``w``) for one task; a whitening that cannot be
    fitted is an error and leaves ``raw`` alone."""
    try:
        by_variant, fitted = variants.for_task(embeddings, run.dataset, task,
                                               run.spec.profile.whitening, run.prepared.cache,
                                               wanted)
    except Exception as error:  # noqa: BLE001
        run.error(f"whitening for task {task.name} on {extractor.name}", error)
        return {"raw": embeddings}
    if fitted is not None:
        run.info.setdefault("whitening", {}).setdefault(extractor.name, {})[task.name] = fitted
    return by_variant


def add_sweep(run: Run, extractor: Any, embeddings: Embeddings, task: Any,
              options: dict[str, Any], cache: Cache) -> None:
    """The task's scores over whitening dimensions k, for the report's sweep plot
    (``whitening_sweep.csv``; an earlier session's rows of other extractors are kept)."""
    fitted = run.info.get("whitening", {}).get(extractor.name, {}).get(task.name)
    if fitted is None:
        return  # the ``w`` variant was not fitted (its error is recorded)
    ctx = TaskContext(seed=0, variant="w", options=options, extractor=extractor,
                      profile=run.spec.profile, cache=cache, device=run.device)
    try:
        rows = variants.sweep(embeddings, run.dataset, task, ctx, float(fitted["shrinkage"]))
    except Exception as error:  # noqa: BLE001
        run.error(f"whitening sweep of task {task.name} on {extractor.name}", error)
        return
    path = run.dir / "whitening_sweep.csv"
    frame = pd.DataFrame([{"extractor": extractor.name, "task": task.name, **row}
                          for row in rows])
    if path.is_file():
        old = pd.read_csv(path)
        keep = ~((old["extractor"] == extractor.name) & (old["task"] == task.name))
        frame = pd.concat([old[keep], frame], ignore_index=True)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def reference_order(extractors: list[tuple[str, Any]], profile: Profile
                    ) -> list[tuple[str, Any]]:
    """The order reference rows draw their sources from: the profile's ``extractors`` list
    first (matched by spec or name), then the rest by name; never the order the extractors
    were given or ran in, so a reordered run declares the same references."""
    listed = list(profile.extractors)

    def rank(item: tuple[str, Any]) -> tuple[int, str, str]:
        spec, extractor = item
        name = str(getattr(extractor, "name", spec))
        position = next((i for i, text in enumerate(listed) if text in (spec, name)),
                        len(listed))
        return position, name, spec

    return sorted(extractors, key=rank)


def reference_sources(run: Run, task: Any, cache: Cache) -> list[tuple[str, Any]]:
    """The extractors a task's ``references`` may draw on, in reference order: every one this
    run embedded; with an ``extractor_protocol``, only those satisfying it, fitted (one an
    earlier session finished is fitted here from its caches: the task may read its model)."""
    protocol = getattr(task, "extractor_protocol", None)
    out = []
    for spec, (extractor, _) in run.sources.items():
        if protocol is None:
            out.append((spec, extractor))
        elif isinstance(extractor, protocol):
            if spec not in run.fitted:
                start = time.perf_counter()
                extractor.fit(run.dataset, FitContext(cache=cache, seed=0,
                                                      log_dir=run.dir / "artifacts" /
                                                      extractor.name))
                run.fitted.add(spec)
                run.spend(extractor.name, "fit_s", start)
            out.append((spec, extractor))
    return reference_order(out, run.spec.profile)


def evaluate_references(run: Run, cache: Cache) -> None:
    """Every task's declared reference rows (ctr's ID-only ranker and ablations, the
    fine-tuning tasks' scratch backbones), after every extractor's own cells: each reference
    once per variant and seed, under its label, its cells not done yet."""
    for name, task in run.active:
        declare = getattr(task, "references", None)
        if not callable(declare):
            continue
        options = run.spec.profile.options(name, getattr(task, "defaults", None))
        try:
            references = declare(reference_sources(run, task, cache), run.dataset, options)
        except Exception as error:  # noqa: BLE001
            run.error(f"references of task {name}", error)
            continue
        for reference in references:
            for member in reference.reference_of:
                run.info.setdefault("paired_references", {}).setdefault(name, {})[member] = \
                    reference.label
            start = time.perf_counter()
            evaluate_reference(run, name, task, reference, options, cache)
            run.spend(reference.label, f"{name}_s", start)
        run.save()


def evaluate_reference(run: Run, name: str, task: Any, reference: Reference,
                       options: dict[str, Any], cache: Cache) -> None:
    """The cells of one reference (its variants x the task's seeds) not done yet. A reference
    made from its source's vectors sees the source's variants, and its rows are cut when the
    source's training was."""
    allowed = variants.available(task, run.dataset, options)
    cells = [Cell(reference.label, variant, name, seed) for variant in reference.variants
             if variant in allowed for seed in run.seeds_of(task)]
    for cell in cells:
        run.plan(cell, reference.label)
    todo = [cell for cell in cells if not run.is_done(cell)]
    if not todo:
        return
    extractor, by_variant, fit_cut = None, None, None
    if reference.source is not None:
        extractor, held = run.sources[reference.source]
        if reference.uses_vectors:
            embeddings = Embeddings.load(held) if isinstance(held, Path) else held
            by_variant = task_variants(run, extractor, embeddings, task,
                                       variants.scheduled(task, options))
            fit_cut = getattr(extractor, "fit_cut", None)
    evaluate_cells(run, name, reference.label, f"reference {reference.label}", todo, by_variant,
                   lambda vectors, ctx: task.evaluate_reference(reference, vectors, run.dataset,
                                                                ctx),
                   TaskContext(options=options, extractor=extractor, profile=run.spec.profile,
                               cache=cache, device=run.device),
                   fit_cut)


def task_references(tasks: list[str], reference: str | None) -> dict[str, str]:
    """Per task, the row every other row is tested against: ``--reference``, else the task's
    own (``reference`` attribute: IDs only for ctr), else ``random``."""
    out = {}
    for name in tasks:
        try:
            declared = getattr(registry.find_task(name), "reference", verdicts.DEFAULT_REFERENCE)
        except (KeyError, registry.SpecError):
            continue
        out[name] = reference or declared
    return out


def write_verdicts(run: Run) -> None:
    """``verdicts.csv`` and ``validity.csv`` from the evidence the tasks left (every session's)."""
    start = time.perf_counter()
    try:
        references = task_references(run.tasks, run.spec.reference)
        run.info["references"] = references
        run.info["main_scores"] = {name: registry.find_task(name).main_score
                                   for name in references}
        verdicts.compute(run.dir, references,
                         MetricBook(run.info.get("metrics")).lower_is_better,
                         cache=run.prepared.cache, paired=run.info.get("paired_references"))
    except Exception as error:  # noqa: BLE001
        run.error("verdicts", error)
    run.timings.setdefault("verdicts", {})["compute_s"] = time.perf_counter() - start


def unservable(extractor: Any, dataset: Dataset) -> str | None:
    """Why the dataset cannot feed the extractor (None when it can): a reference extractor
    built from ground truth (modality ``latents``, the ladder) needs a dataset that has it."""
    if "latents" in getattr(extractor, "modalities", ()) and dataset.latents is None:
        return (f"dataset {dataset.name!r} has no ground-truth latents, so the known-answer "
                "ladder (and its validity check) cannot run on it")
    return None


def run_benchmark(spec: RunSpec, cache: Cache | None = None) -> Run:
    """Prepare (``RunRefused`` on bad input) and execute a run."""
    return execute_run(prepare_run(spec, cache))


def execute_run(prepared: Prepared) -> Run:
    """Evaluate every cell not done yet, extractor by extractor; ``RunInterrupted`` after
    recording ``status: interrupted`` when the user stops it."""
    spec = prepared.spec
    run = Run(prepared)
    resumed = f", resuming ({len(run.missing())} cells not done)" if run.previous else ""
    log(f"run {run.run_id}: profile {spec.profile.name}, dataset {spec.dataset}, "
        f"extractors {','.join(spec.extractors)}, tasks {','.join(spec.tasks)}{resumed}")
    try:
        run.save()
        pictures = RunArtifacts(run.dataset)  # embedding-map sample and KNN grid for the report
        for spec_text, extractor in prepared.extractors:
            run_extractor(run, spec_text, extractor, pictures, prepared.cache)
        evaluate_references(run, prepared.cache)
        pictures.save(run.dir)
        run.errors += pictures.errors
        write_verdicts(run)
        run.finish()
        write_outputs(run, full=spec.report)
    except KeyboardInterrupt as interrupt:
        if run.status == "running":
            run.finish("interrupted")
            write_outputs(run, full=False)
        raise RunInterrupted(run) from interrupt
    return run


def run_extractor(run: Run, spec_text: str, extractor: Any, pictures: RunArtifacts,
                  cache: Cache) -> None:
    """Fit, embed and evaluate one extractor's missing cells; an earlier session's finished
    extractor only lends its cached embeddings to the pictures."""
    reason = unservable(extractor, run.dataset)
    if reason:
        run.not_started.remove(spec_text)
        run.skipped.append({"extractor": extractor.name, "reason": reason})
        run.info["validity_note"] = reason
        log(f"skipping extractor {extractor.name}: {reason}")
        return
    if run.extractor_done(spec_text, extractor):
        run.not_started.remove(spec_text)
        log(f"{extractor.name}: every cell done in an earlier session")
        path = embeddings_path(extractor, run.dataset, cache)
        cached = read_cached(path, Embeddings.load)
        if cached is not None:
            pictures.add(extractor.name, cached)
            run.sources[spec_text] = (extractor, path)  # fitted only if a reference needs it
        return
    try:
        embeddings, timings = embed_cached(extractor, run.dataset, cache,
                                           run.dir / "artifacts" / extractor.name)
        run.timings[extractor.name] = timings
        # what was loaded: weights' sha256 or the model's revision for third-party models
        run.info.setdefault("extractor_configs", {})[extractor.name] = extractor.config()
        run.info.setdefault("embeddings", {})[extractor.name] = embeddings.meta.get("cache_file")
        run.info.setdefault("embeddings_fingerprints", {})[extractor.name] = embeddings.meta.get(
            "fingerprint")  # None: a cut training's vectors, never cached
    except Exception as error:  # noqa: BLE001
        run.not_started.remove(spec_text)
        run.error(f"extractor {spec_text}", error)
        run.save()
        return
    run.not_started.remove(spec_text)
    evaluate_tasks(run, spec_text, extractor, embeddings, cache)
    pictures.add(extractor.name, embeddings)
    cache_file = embeddings.meta.get("cache_file")  # read back for references, not kept
    run.sources[spec_text] = (extractor, Path(cache_file) if cache_file else embeddings)
    run.fitted.add(spec_text)
    run.save()


def write_outputs(run: Run, full: bool = True) -> None:
    """``summary.md`` always; plots and HTML when ``full``. Failures never lose results.csv."""
    try:
        from bench.report import build_report

        build_report(run.dir, html=full)
    except Exception as error:  # noqa: BLE001
        run.error("report", error)
        if run.status == "complete":
            run.status = "failed"
            if run.sessions:
                run.sessions[-1]["status"] = run.status
        run.save()
