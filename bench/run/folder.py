"""The run folder's layout, written in one place for every command that makes one (``bench
run``, ``bench ams``): ``results.csv`` (long rows in ``RESULT_COLUMNS``) and ``run.json`` (what
ran, its status and its provenance), both written atomically, so a reader (the report, ``bench
compare``, a resumed run) never sees half a file and never has to know which command wrote it.

Every ``run.json`` carries ``PROVENANCE_KEYS``: the command that made it, the profile and
dataset, the extractors, tasks and seeds, the effective config, what each emitted metric means
(``metrics``, from the tasks' declarations, ``bench.core.metric_info``), the environment (Python,
packages, git revision, hardware), errors and timings. ``write_run_json`` refuses a record
without them, so a command cannot drift into a thinner ``run.json``.
"""

from __future__ import annotations

import errno
import json
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.cache import atomic_path
from bench.core.metric_info import UndeclaredMetric, describe, legacy_record

RESULT_COLUMNS = ["run", "dataset", "extractor", "variant", "task", "metric", "seed", "value"]
PROVENANCE_KEYS = ("run", "status", "command", "profile", "dataset", "extractors", "tasks",
                   "seeds", "config", "metrics", "environment", "errors", "timings")
PACKAGES = ("torch", "torchvision", "lightly", "faiss-cpu", "numpy", "pandas", "scikit-learn",
            "matplotlib")
REPO_ROOT = Path(__file__).resolve().parents[2]


def environment() -> dict[str, Any]:
    """Python, package versions, the git revision of this checkout and the hardware."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                  cwd=REPO_ROOT, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        revision = None
    import torch

    hardware = {"machine": platform.machine(), "processor": platform.processor(),
                "cpus": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
                "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "packages": versions, "git_revision": revision, "hardware": hardware}


def results_frame(rows: Iterable[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Rows as a frame in ``RESULT_COLUMNS`` order (extra columns an earlier results.csv
    carried are kept after them); a row lacking a column is a bug of its writer."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if frame.empty and not len(frame.columns):
        return pd.DataFrame(columns=RESULT_COLUMNS)
    missing = [c for c in RESULT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"results rows lack the columns {', '.join(missing)}")
    return frame[[*RESULT_COLUMNS, *[c for c in frame.columns if c not in RESULT_COLUMNS]]]


class StorageError(OSError):
    """The run folder could not be written (a full disk, a quota): one line saying what,
    where and how much was needed; the files written before stay intact."""


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def free_space(folder: Path) -> str:
    """``, N MB free there`` (empty when the file system cannot say)."""
    try:
        return f", {shutil.disk_usage(folder).free / 1e6:.1f} MB free there"
    except OSError:
        return ""


def no_space(error: OSError, run_dir: Path) -> StorageError:
    """Any writer's full-disk error (evidence, sweeps, pictures) as one line about the run
    folder; ``store_text``'s own already names its file and size."""
    if isinstance(error, StorageError):
        return error
    where = error.filename or run_dir
    return StorageError(error.errno, f"cannot write {where}: {error.strerror or error}"
                                     f"{free_space(Path(run_dir))}; the files written before "
                                     "are intact")


def store_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically, or raise ``StorageError`` naming the file, the
    bytes it needs and the space left there (the old file is untouched: ``atomic_path``)."""
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as error:
        raise StorageError(error.errno, f"cannot write {path}: "
                           f"{error.strerror or error} (it needs {len(text.encode()) / 1e3:.1f} "
                           f"kB{free_space(path.parent)}); the files written before are "
                           "intact") from None
    return path


def write_results(run_dir: Path, rows: Iterable[dict[str, Any]] | pd.DataFrame) -> Path:
    """``results.csv``, written atomically."""
    return store_text(Path(run_dir) / "results.csv", results_frame(rows).to_csv(index=False))


def write_run_json(run_dir: Path, info: dict[str, Any]) -> Path:
    """``run.json``, written atomically; ``info`` must hold every key of ``PROVENANCE_KEYS``."""
    missing = [k for k in PROVENANCE_KEYS if k not in info]
    if missing:
        raise ValueError(f"run.json of {run_dir} would lack {', '.join(missing)}")
    return store_text(Path(run_dir) / "run.json",
                      json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")


def declare_metrics(book: dict[str, dict[str, Any]], task_name: str, task: Any,
                    names: Iterable[str]) -> list[UndeclaredMetric]:
    """Add what each metric in ``names`` means (from ``task.metrics``) to ``book`` (run.json
    ``metrics``: name -> direction, kind, unit, tasks). A metric the task does not declare is
    described from its name, marked ``undeclared``, and returned as an error of the task."""
    problems = []
    for name in dict.fromkeys(str(n) for n in names):
        if name in book:
            if task_name not in book[name]["tasks"]:
                book[name]["tasks"].append(task_name)
            continue
        try:
            record = describe(task, name)
        except UndeclaredMetric as error:
            problems.append(error)
            record = {**legacy_record(name), "undeclared": True}
        book[name] = {**record, "tasks": [task_name]}
    return problems
