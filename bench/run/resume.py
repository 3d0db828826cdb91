"""What a run folder already holds, so a run can resume: cells, rows, and the settings they share.

A cell is one (extractor spec, variant, task, seed) evaluation, the unit MTEB's ``only-missing``
skips. ``run.json`` lists every cell a run planned with its state (``done``, ``cut`` by a time
cap, ``failed``, ``pending``); ``results.csv`` holds the rows. Re-running a run id (or
``bench run --resume ID``) keeps every row, recomputes only cells that are not ``done``, and
refuses settings that would make old and new rows incomparable (another profile, dataset or
dataset option). Rows are deduplicated on ``ROW_KEY``, the newest kept.

Reference rows (ctr's ID-only ranker and ablations, fine-tuning's scratch backbones) are cells
like any other, under their declared label, so they resume the same way. Everything here is
plain data; the runner decides what to run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.cache import READ_ERRORS, quarantine

ROW_KEY = ["extractor", "variant", "task", "metric", "seed"]
TEXT_COLUMNS = {"run": str, "dataset": str, "extractor": str, "variant": str, "task": str,
                "metric": str}
DONE, CUT, FAILED, PENDING = "done", "cut", "failed", "pending"


class ResumeError(ValueError):
    """A run folder that cannot be resumed with these settings; the message says why."""


@dataclass(frozen=True)
class Cell:
    extractor: str  # the spec as given on the command line, e.g. "moco_v2:epochs=5"
    variant: str
    task: str
    seed: int

    @classmethod
    def of(cls, record: dict[str, Any]) -> Cell:
        return cls(str(record["extractor"]), str(record["variant"]), str(record["task"]),
                   int(record["seed"]))


@dataclass
class Previous:
    """An earlier session of this run id: its run.json, its rows and its cells' states."""

    info: dict[str, Any]
    rows: pd.DataFrame
    cells: dict[Cell, dict[str, Any]] = field(default_factory=dict)

    def done(self, cell: Cell) -> bool:
        return self.cells.get(cell, {}).get("state") == DONE


def run_config(profile: Any, dataset: str, dataset_options: dict[str, Any]) -> dict[str, Any]:
    """The settings every cell of a run shares: the profile's contents (budgets, task options,
    dataset sizes) and the dataset with its options. Extractors, tasks and seeds only say
    which cells exist, so a later session may add to them."""
    settings = {k: v for k, v in asdict(profile).items()
                if k not in ("extractors", "tasks", "seeds")}
    return json.loads(json.dumps({"profile": settings, "dataset": dataset.split(":")[0],
                                  "dataset_options": dataset_options}, default=str))


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ, e.g. ``profile.train.*.epochs``."""
    changes = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            changes += config_changes(a, b, name + ".")
        elif a != b:
            changes.append(f"{name} {a!r} -> {b!r}")
    return changes


def load_previous(run_dir: Path, config: dict[str, Any]) -> Previous | None:
    """The earlier session of the run in ``run_dir``, or None for a new run. A damaged
    run.json or results.csv is moved aside (said so) and the run starts again; settings that
    differ raise ``ResumeError`` naming them."""
    info_path, results_path = run_dir / "run.json", run_dir / "results.csv"
    if not info_path.exists():
        if results_path.exists():
            quarantine(results_path, "results.csv without run.json")
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
    except READ_ERRORS as error:
        quarantine(info_path, error)
        if results_path.exists():
            quarantine(results_path, "its run.json was damaged")
        return None
    cells = {Cell.of(c): c for c in info.get("cells", [])}
    if info.get("run_config") is None:
        if not cells and not results_path.exists():
            return None  # refused before anything ran: nothing to keep
        raise ResumeError(f"{run_dir} holds results without a record of their settings (an "
                          "older version wrote it); choose another --run-id")
    changes = config_changes(info["run_config"], config)
    if changes:
        raise ResumeError(f"run {run_dir.name!r} was made with other settings ("
                          f"{'; '.join(changes[:3])}{'; ...' if len(changes) > 3 else ''}); "
                          "resume it with the same ones or choose another --run-id")
    rows = read_rows(results_path)
    if rows is None:  # lost rows: their cells must run again
        cells = {}
        rows = pd.DataFrame()
    return Previous(info, rows, cells)


def read_rows(path: Path) -> pd.DataFrame | None:
    """Every column of an earlier results.csv (a later version may have added some); None
    when it is damaged (then moved aside); an empty frame when there is none."""
    if not path.exists():
        return pd.DataFrame()
    try:
        rows = pd.read_csv(path, dtype=TEXT_COLUMNS)
        missing = set(ROW_KEY) - set(rows.columns)
        if missing:
            raise ValueError(f"missing columns {sorted(missing)}")
        return rows
    except READ_ERRORS as error:
        quarantine(path, error)
        return None


def merge_rows(previous: pd.DataFrame, new: list[dict[str, Any]],
               first_columns: list[str]) -> pd.DataFrame:
    """Earlier rows and this session's, one row per ``ROW_KEY`` (the newest wins), with
    ``first_columns`` first and any other column kept after them."""
    frames = [f for f in (previous, pd.DataFrame(new)) if len(f)]
    if not frames:
        return pd.DataFrame(columns=first_columns)
    rows = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    rows = rows.drop_duplicates(subset=ROW_KEY, keep="last").reset_index(drop=True)
    order = [c for c in first_columns if c in rows.columns]
    return rows[order + [c for c in rows.columns if c not in order]]
