"""Reads the run-time pictures the runner wrote (``bench/run/pictures.py``): the embedding-map sample
and the KNN picture grid. The report never computes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.core.cache import load_npz
from bench.run.pictures import GRID_FILE, SAMPLE_FILE  # the writer names its files


def load_sample(run_dir: str | Path) -> dict[str, np.ndarray] | None:
    path = Path(run_dir) / "artifacts" / SAMPLE_FILE
    return load_npz(path) if path.is_file() else None


def load_grid(run_dir: str | Path) -> dict[str, np.ndarray] | None:
    path = Path(run_dir) / "artifacts" / GRID_FILE
    return load_npz(path) if path.is_file() else None
