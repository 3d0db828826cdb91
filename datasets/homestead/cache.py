"""The cache entry of one world: images as ``.npz``, tables as parquet, ``meta.json`` last.

Why its own module: reading and writing the entry (atomically, with damaged files moved aside
and regenerated) is independent of how the world is drawn. The entry's folder name is the
dataset fingerprint, computed in ``__init__`` from the options and ``GENERATOR_VERSION``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.core.cache import READ_ERRORS, atomic_path, load_npz, quarantine, save_npz, write_json

TABLES = ("items", "impressions", "users", "item_latents", "latents")


def write_entry(folder: Path, images: np.ndarray, tables: dict[str, pd.DataFrame],
                meta: dict[str, Any]) -> None:
    """Images as .npz, tables as parquet, meta.json last: its presence marks a complete entry."""
    save_npz(folder / "images.npz", images=images)
    for name, frame in tables.items():
        with atomic_path(folder / f"{name}.parquet") as tmp:
            frame.to_parquet(tmp, index=False)
    write_json(folder / "meta.json", meta)


def read_entry(folder: Path) -> tuple[np.ndarray, dict[str, pd.DataFrame], dict] | None:
    """A complete cache entry, or None when it is missing or damaged (then it is regenerated)."""
    if not (folder / "meta.json").is_file():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        images = load_npz(folder / "images.npz")["images"]
        tables = {name: pd.read_parquet(folder / f"{name}.parquet") for name in TABLES}
    except READ_ERRORS as error:  # truncated or foreign: named, moved aside, regenerated
        quarantine(folder, error)
        return None
    return images, tables, meta


