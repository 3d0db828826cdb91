"""Fingerprints and atomic, pickle-free storage for everything the suite caches.

Every write goes to a temporary file in the target folder and is moved into place with
``os.replace``, so an interrupted run never leaves a half-written cache entry or result behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

CODE_VERSION = "1"  # bump when cached artefacts change meaning
_UMASK = os.umask(0)
os.umask(_UMASK)


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (config dicts, names, versions)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it over ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Save arrays atomically; object arrays are refused so loading never needs pickle."""
    for name, array in arrays.items():
        if np.asarray(array).dtype == object:
            raise TypeError(f"array {name!r} has dtype object; convert it (e.g. to str) first")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return Path(path)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def default_cache_root() -> Path:
    return Path(os.environ.get("BENCH_CACHE_DIR", Path.cwd() / ".cache" / "bench"))


class Cache:
    """A folder of cached artefacts addressed by (kind, key); safe to delete at any time."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_root()

    def path(self, kind: str, key: str, suffix: str = "") -> Path:
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{key}{suffix}"
