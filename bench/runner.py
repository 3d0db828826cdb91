"""One benchmark run: dataset -> extractors (fit, embed, cached) -> variants -> tasks -> results.

Results are appended after each extractor and written atomically, so an error in one extractor
or task (recorded in ``run.json``) never loses what was computed before it.
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import registry, variants, verdicts
from bench.cache import CODE_VERSION, Cache, atomic_path, fingerprint, write_json, write_text
from bench.config import Profile
from bench.data import Dataset
from bench.embeddings import Embeddings
from bench.extractor import FitContext
from bench.report.artifacts import RunArtifacts
from bench.tasks import TaskContext, get_task

RESULT_COLUMNS = ["run", "dataset", "extractor", "variant", "task", "metric", "seed", "value"]
PACKAGES = ("torch", "torchvision", "lightly", "faiss-cpu", "numpy", "pandas", "scikit-learn",
            "matplotlib")


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
    reference: str | None = None  # the row every other is tested against (default per task)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def embed_cached(extractor: Any, dataset: Dataset, cache: Cache, log_dir: Path) -> tuple[Embeddings, dict[str, float]]:
    """Fit (the extractor caches its own weights) and embed every dataset row, cached."""
    timings: dict[str, float] = {}
    key = fingerprint(dataset.fingerprint, extractor.name, extractor.config(), CODE_VERSION)
    path = cache.path("embeddings", f"{dataset.name.replace(':', '_')}-{key}", ".npz")
    ctx = FitContext(cache=cache, seed=0, log_dir=log_dir)
    cached = None
    if path.exists():
        try:
            cached = Embeddings.load(path)
        except ValueError as error:
            log(f"ignoring unreadable cached embeddings {path}: {error}")
    if cached is not None:
        timings["cached"] = 1.0
        if callable(getattr(extractor, "backbone", None)):
            # tasks may fine-tune backbone(): load its trained weights (a checkpoint cache hit)
            start = time.perf_counter()
            extractor.fit(dataset, ctx)
            timings["fit_s"] = time.perf_counter() - start
        keep_train_log(path, log_dir, restore=True)
        return cached, timings
    start = time.perf_counter()
    extractor.fit(dataset, ctx)
    timings["fit_s"] = time.perf_counter() - start
    start = time.perf_counter()
    vectors = extractor.embed(dataset, np.arange(len(dataset)))
    timings["embed_s"] = time.perf_counter() - start
    meta = {"extractor": extractor.name, "config": extractor.config(), "fingerprint": key,
            "dataset": dataset.name, "created": dt.datetime.now().isoformat(timespec="seconds")}
    embeddings = Embeddings(dataset.ids, vectors, meta | {"source": extractor.name})
    if embeddings.dim != extractor.dim:
        log(f"{extractor.name}: declared dim {extractor.dim} but produced {embeddings.dim}")
    embeddings.save(path)
    keep_train_log(path, log_dir, restore=False)
    return embeddings, timings


def keep_train_log(embeddings_path: Path, log_dir: Path, restore: bool) -> None:
    """Keep the extractor's ``train_log.json`` beside its cached embeddings, and put it back
    into the run folder on a cache hit, so loss curves survive runs that skip training."""
    cached = embeddings_path.with_suffix(".train_log.json")
    current = Path(log_dir) / "train_log.json"
    source, target = (cached, current) if restore else (current, cached)
    if source.is_file() and not (restore and target.is_file()):
        write_text(target, source.read_text(encoding="utf-8"))


def environment() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                  cwd=registry.REPO_ROOT, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        revision = None
    import torch

    hardware = {"machine": platform.machine(), "processor": platform.processor(),
                "cpus": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
                "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "packages": versions, "git_revision": revision, "hardware": hardware}


class Run:
    """Holds a run's rows, errors and timings and writes them to ``results/<run-id>/``."""

    def __init__(self, spec: RunSpec):
        self.spec = spec
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.run_id = spec.run_id or f"{stamp}-{spec.profile.name}-{spec.dataset.split(':')[0]}"
        self.dir = Path(spec.out_root) / self.run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.errors: list[dict[str, str]] = []
        self.skipped: list[dict[str, str]] = []
        self.timings: dict[str, dict[str, float]] = {}
        self.sweep: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self.info: dict[str, Any] = {}
        self.environment = environment()  # once: save() runs after every extractor

    def error(self, where: str, error: BaseException) -> None:
        log(f"error in {where}: {type(error).__name__}: {error}")
        self.errors.append({"where": where, "error": f"{type(error).__name__}: {error}",
                            "traceback": traceback.format_exc(limit=6)})

    def add_rows(self, dataset: str, extractor: str, variant: str, task: str, seed: int,
                 task_rows: list[dict[str, Any]]) -> None:
        """Append the task's rows; their evidence (for intervals) goes to ``evidence/``."""
        evidence: dict[tuple[str, str, int], dict[str, Any]] = {}
        for row in task_rows:
            cell = (row.get("extractor", extractor), row.get("variant", variant),
                    int(row.get("seed", seed)))
            self.rows.append({"run": self.run_id, "dataset": dataset, "extractor": cell[0],
                              "variant": cell[1], "task": task, "metric": row["metric"],
                              "seed": cell[2], "value": float(row["value"])})
            if row.get("evidence") is not None:
                evidence.setdefault(cell, {})[row["metric"]] = row["evidence"]
        for (row_extractor, row_variant, row_seed), items in evidence.items():
            verdicts.save_evidence(self.dir, task, row_extractor, row_variant, row_seed, items)

    def save(self) -> None:
        frame = pd.DataFrame(self.rows, columns=RESULT_COLUMNS)
        with atomic_path(self.dir / "results.csv") as tmp:
            frame.to_csv(tmp, index=False)
        spec = self.spec
        write_json(self.dir / "run.json", {
            "run": self.run_id, "profile": spec.profile.name, "dataset": spec.dataset,
            "dataset_options": spec.dataset_options, "extractors": list(spec.extractors),
            "tasks": list(spec.tasks), "seeds": list(range(spec.seeds)),
            "config": {"train": spec.profile.train, "task_options": spec.profile.task_options},
            "timings": self.timings, "total_s": time.perf_counter() - self.started,
            "errors": self.errors, "skipped": self.skipped, "plugin_errors":
                [str(e) for e in registry.load_errors], "environment": self.environment,
            **self.info})


def evaluate_tasks(run: Run, spec: RunSpec, dataset: Dataset, extractor: Any,
                   embeddings: Embeddings, cache: Cache) -> None:
    for name in spec.tasks:
        try:
            task = get_task(name)
        except Exception as error:  # noqa: BLE001
            run.error(f"task {name}", error)
            continue
        reason = task.skip_reason(dataset)
        if reason:
            if not any(s.get("task") == name for s in run.skipped):
                run.skipped.append({"task": name, "reason": reason})
                log(f"skipping task {name}: {reason}")
            continue
        start = time.perf_counter()
        options = spec.profile.options(name, getattr(task, "defaults", None))
        try:
            by_variant, fitted = variants.for_task(embeddings, dataset, task,
                                                   spec.profile.whitening)
        except Exception as error:  # noqa: BLE001
            run.error(f"whitening for task {name} on {extractor.name}", error)
            by_variant, fitted = {"raw": embeddings}, None
        if fitted is not None:
            run.info.setdefault("whitening", {}).setdefault(extractor.name, {})[name] = fitted
        seeds = range(spec.seeds) if task.seeded else [0]
        for variant in task.variants:
            if variant not in by_variant:
                continue
            for seed in seeds:
                ctx = TaskContext(seed=seed, variant=variant, options=options,
                                  extractor=extractor, profile=spec.profile, cache=cache,
                                  artifacts_dir=run.dir / "artifacts")
                try:
                    result = task.evaluate(by_variant[variant], dataset, ctx)
                    run.add_rows(dataset.name, extractor.name, variant, name, seed, result)
                except Exception as error:  # noqa: BLE001
                    run.error(f"task {name} on {extractor.name}/{variant} seed {seed}", error)
        if options.get("whitening_sweep") and "w" in by_variant:
            add_sweep(run, spec, dataset, extractor, embeddings, task, options, cache)
        run.timings.setdefault(extractor.name, {})[f"{name}_s"] = time.perf_counter() - start


def add_sweep(run: Run, spec: RunSpec, dataset: Dataset, extractor: Any, embeddings: Embeddings,
              task: Any, options: dict[str, Any], cache: Cache) -> None:
    """The task's scores over whitening dimensions k, for the report's sweep plot."""
    ctx = TaskContext(seed=0, variant="w", options=options, extractor=extractor,
                      profile=spec.profile, cache=cache)
    try:
        rows = variants.sweep(embeddings, dataset, task, ctx, spec.profile.whitening)
    except Exception as error:  # noqa: BLE001
        run.error(f"whitening sweep of task {task.name} on {extractor.name}", error)
        return
    run.sweep += [{"extractor": extractor.name, "task": task.name, **row} for row in rows]
    frame = pd.DataFrame(run.sweep)
    with atomic_path(run.dir / "whitening_sweep.csv") as tmp:
        frame.to_csv(tmp, index=False)


def task_references(spec: RunSpec) -> dict[str, str]:
    """Per task, the row every other row is tested against: ``--reference``, else the task's
    own (``reference`` attribute: IDs only for ctr), else ``random``."""
    out = {}
    for name in spec.tasks:
        try:
            declared = getattr(get_task(name), "reference", verdicts.DEFAULT_REFERENCE)
        except KeyError:
            continue
        out[name] = spec.reference or declared
    return out


def write_verdicts(run: Run) -> None:
    """``verdicts.csv`` and ``validity.csv`` from the evidence the tasks left."""
    from bench.report.tables import lower_is_better

    start = time.perf_counter()
    try:
        references = task_references(run.spec)
        run.info["references"] = references
        run.info["main_scores"] = {name: get_task(name).main_score for name in references}
        verdicts.compute(run.dir, references, lower_is_better)
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
    cache = cache or Cache()
    registry.load_plugins(spec.plugins)
    for problem in registry.load_errors:
        log(str(problem))
    run = Run(spec)
    log(f"run {run.run_id}: profile {spec.profile.name}, dataset {spec.dataset}, "
        f"extractors {','.join(spec.extractors)}, tasks {','.join(spec.tasks)}")
    start = time.perf_counter()
    dataset = registry.build_dataset(spec.dataset.split(":")[0], cache, **spec.dataset_options)
    run.timings["dataset"] = {"load_s": time.perf_counter() - start}
    run.info["dataset_fingerprint"] = dataset.fingerprint
    run.info["dataset_size"] = len(dataset)
    pictures = RunArtifacts(dataset)  # embedding-map sample and KNN grid for the report
    for spec_text in spec.extractors:
        try:
            extractor = registry.build_extractor(spec_text, spec.profile)
            reason = unservable(extractor, dataset)
            if reason:
                run.skipped.append({"extractor": extractor.name, "reason": reason})
                run.info["validity_note"] = reason
                log(f"skipping extractor {extractor.name}: {reason}")
                continue
            log(f"{extractor.name}: fit and embed {len(dataset)} items")
            embeddings, timings = embed_cached(extractor, dataset, cache,
                                               run.dir / "artifacts" / extractor.name)
            run.timings[extractor.name] = timings
        except Exception as error:  # noqa: BLE001
            run.error(f"extractor {spec_text}", error)
            run.save()
            continue
        evaluate_tasks(run, spec, dataset, extractor, embeddings, cache)
        pictures.add(extractor.name, embeddings)
        run.save()
    pictures.save(run.dir)
    run.errors += pictures.errors
    write_verdicts(run)
    run.save()
    write_outputs(run, full=spec.report)
    return run


def write_outputs(run: Run, full: bool = True) -> None:
    """``summary.md`` always; plots and HTML when ``full``. Failures never lose results.csv."""
    try:
        if full:
            from bench.report import build_report

            build_report(run.dir)
        else:
            from bench.report import read_run, read_verdicts
            from bench.report.tables import summary_markdown

            results, info = read_run(run.dir)
            write_text(run.dir / "summary.md", summary_markdown(
                results, f"Run {run.run_id}", info, *read_verdicts(run.dir)))
    except Exception as error:  # noqa: BLE001
        run.error("report", error)
        run.save()
