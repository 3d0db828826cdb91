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

import pandas as pd

from bench import registry
from bench.cache import CODE_VERSION, Cache, atomic_path, fingerprint, write_json, write_text
from bench.config import Profile
from bench.data import Dataset
from bench.embed_store import embed_resumable
from bench.embeddings import Embeddings
from bench.extractor import FitContext
from bench.report.artifacts import RunArtifacts
from bench.tasks import TaskContext, get_task
from bench.whitening import fit_whitening

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
        cached.meta["cache_file"] = str(path)
        return cached, timings
    start = time.perf_counter()
    extractor.fit(dataset, ctx)
    timings["fit_s"] = time.perf_counter() - start
    start = time.perf_counter()
    meta = {"extractor": extractor.name, "config": extractor.config(), "fingerprint": key,
            "dataset": dataset.name, "created": dt.datetime.now().isoformat(timespec="seconds")}
    # shard by shard beside ``path``: a stopped run resumes at the next unfinished shard
    embeddings = embed_resumable(extractor, dataset, path, meta | {"source": extractor.name})
    timings["embed_s"] = time.perf_counter() - start
    if embeddings.dim != extractor.dim:
        log(f"{extractor.name}: declared dim {extractor.dim} but produced {embeddings.dim}")
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


def variants(embeddings: Embeddings, dataset: Dataset) -> dict[str, Embeddings]:
    """``raw`` and ``w`` (whitening fitted on the train split only)."""
    train = dataset.rows(split="train")
    if len(train) < 2:
        return {"raw": embeddings}
    whitening = fit_whitening(embeddings.take(train))
    return {"raw": embeddings, "w": embeddings.with_vectors(whitening.apply(embeddings.vectors))}


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
        self.started = time.perf_counter()
        self.info: dict[str, Any] = {}
        self.environment = environment()  # once: save() runs after every extractor

    def error(self, where: str, error: BaseException) -> None:
        log(f"error in {where}: {type(error).__name__}: {error}")
        self.errors.append({"where": where, "error": f"{type(error).__name__}: {error}",
                            "traceback": traceback.format_exc(limit=6)})

    def add_rows(self, dataset: str, extractor: str, variant: str, task: str, seed: int,
                 task_rows: list[dict[str, Any]]) -> None:
        for row in task_rows:
            self.rows.append({"run": self.run_id, "dataset": dataset,
                              "extractor": row.get("extractor", extractor),
                              "variant": row.get("variant", variant), "task": task,
                              "metric": row["metric"], "seed": row.get("seed", seed),
                              "value": float(row["value"])})

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
    by_variant = variants(embeddings, dataset)
    for name in spec.tasks:
        try:
            task = get_task(name)
        except Exception as error:  # noqa: BLE001
            run.error(f"task {name}", error)
            continue
        reason = task.skip_reason(dataset)
        if reason:
            if not any(s["task"] == name for s in run.skipped):
                run.skipped.append({"task": name, "reason": reason})
                log(f"skipping task {name}: {reason}")
            continue
        start = time.perf_counter()
        seeds = range(spec.seeds) if task.seeded else [0]
        for variant in task.variants:
            if variant not in by_variant:
                continue
            for seed in seeds:
                ctx = TaskContext(seed=seed, variant=variant,
                                  options=spec.profile.options(name, getattr(task, "defaults", None)),
                                  extractor=extractor, profile=spec.profile, cache=cache,
                                  artifacts_dir=run.dir / "artifacts")
                try:
                    result = task.evaluate(by_variant[variant], dataset, ctx)
                    run.add_rows(dataset.name, extractor.name, variant, name, seed, result)
                except Exception as error:  # noqa: BLE001
                    run.error(f"task {name} on {extractor.name}/{variant} seed {seed}", error)
        run.timings.setdefault(extractor.name, {})[f"{name}_s"] = time.perf_counter() - start


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
    run.info["cache"], run.info["plugins"] = str(cache.root), list(spec.plugins)
    run.info["dataset_size"] = len(dataset)
    pictures = RunArtifacts(dataset)  # embedding-map sample and KNN grid for the report
    for spec_text in spec.extractors:
        try:
            extractor = registry.build_extractor(spec_text, spec.profile)
            log(f"{extractor.name}: fit and embed {len(dataset)} items")
            embeddings, timings = embed_cached(extractor, dataset, cache,
                                               run.dir / "artifacts" / extractor.name)
            run.timings[extractor.name] = timings
            # what was loaded: weights' sha256 or the model's revision for third-party models
            run.info.setdefault("extractor_configs", {})[extractor.name] = extractor.config()
            run.info.setdefault("embeddings", {})[extractor.name] = embeddings.meta["cache_file"]
        except Exception as error:  # noqa: BLE001
            run.error(f"extractor {spec_text}", error)
            run.save()
            continue
        evaluate_tasks(run, spec, dataset, extractor, embeddings, cache)
        pictures.add(extractor.name, embeddings)
        run.save()
    pictures.save(run.dir)
    run.errors += pictures.errors
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
            from bench.report.tables import summary_markdown

            results = pd.read_csv(run.dir / "results.csv")
            write_text(run.dir / "summary.md", summary_markdown(results, f"Run {run.run_id}"))
    except Exception as error:  # noqa: BLE001
        run.error("report", error)
        run.save()
