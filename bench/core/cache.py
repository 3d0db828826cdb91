"""Fingerprints and atomic, pickle-free storage for everything the suite caches.

Every write goes to a temporary file in the target folder and is moved into place with
``os.replace``, so an interrupted run never leaves a half-written cache entry or result behind.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CODE_VERSION = "1"  # bump when cached artefacts change meaning
# What reading a damaged file can raise (truncated zip, empty file, bad JSON or parquet, ...).
READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)

log = logging.getLogger(__name__)


class DamagedFileError(ValueError):
    """A cached or saved file that exists but cannot be read; the message names it."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)
_UMASK = os.umask(0)
os.umask(_UMASK)


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (config dicts, names, versions)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def array_digest(*parts: Any) -> str:
    """A hash of arrays by content (dtype, shape, bytes; text arrays as text) and of JSON-able
    parts: a cache key for a computation on the data itself, so changed inputs never hit an old
    entry."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            array = np.ascontiguousarray(part.astype(str) if part.dtype.kind in "OU" else part)
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(array.tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


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
    """Every array of an ``.npz`` (no pickle). A missing file raises ``FileNotFoundError``; an
    empty, truncated or foreign one ``DamagedFileError`` naming the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file {path}")
    if os.path.getsize(path) == 0:
        raise DamagedFileError(f"{path}: the file is empty", path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError("a single .npy array, not an .npz archive")
            return {name: data[name] for name in data.files}
    except READ_ERRORS as error:
        raise DamagedFileError(f"{path}: cannot be read ({type(error).__name__}: "
                               f"{error})", path) from error


def quarantine(path: str | os.PathLike, reason: BaseException | str) -> Path:
    """Move a damaged cache entry (file or folder) aside to ``<name>.corrupt`` (replacing an
    older one), say so on stderr, and return the new path; the caller then recomputes."""
    path = Path(path)
    aside = path.with_name(path.name + ".corrupt")
    if aside.is_dir():
        import shutil

        shutil.rmtree(aside, ignore_errors=True)
    os.replace(path, aside)
    log.warning("damaged cache entry %s (%s); moved it to %s, recomputing", path, reason,
                aside.name)
    return aside


def read_cached(path: str | os.PathLike, reader: Callable[[Path], Any]) -> Any:
    """``reader(path)``, or None when the file is missing or damaged (then it is moved aside
    with ``quarantine``): every cache reader goes on with a recomputation, never a crash."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return reader(path)
    except READ_ERRORS as error:
        quarantine(path, error)
        return None


class Busy(RuntimeError):
    """A lock another process holds; ``holder`` is what it wrote into the lock file."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder or 'another process'}")
        self.path, self.holder = path, holder


@contextmanager
def exclusive(path: str | os.PathLike, wait: bool = True,
              on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an advisory lock (``fcntl.flock``) on ``path`` for the duration, with this
    process's PID and start time written inside. ``wait=False``: raise ``Busy`` naming the
    holder instead of waiting. The lock goes with the process (a killed holder frees it);
    Linux maps ``flock`` to byte-range locks on NFS, so a shared file system is covered."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held until the block ends
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            if not wait:
                raise Busy(path, holder) from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()}, since "
                     f"{dt.datetime.now().isoformat(timespec='seconds')}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing the file releases the lock


@dataclass(frozen=True)
class Codec:
    """How one kind of cached result is stored: a suffix, a reader and an atomic writer."""

    suffix: str
    read: Callable[[Path], Any]
    write: Callable[[Path, Any], Any]


JSON = Codec(".json", lambda path: json.loads(path.read_text(encoding="utf-8")), write_json)
NPZ = Codec(".npz", load_npz, lambda path, arrays: save_npz(path, **arrays))


def cached(cache: Cache | None, kind: str, key: str | None, compute: Callable[[], Any], *,
           codec: Codec = JSON, valid: Callable[[Any], bool] | None = None,
           keep: Callable[[Any], bool] | None = None) -> Any:
    """``compute()`` once per (``kind``, ``key``): the one compute-or-read every cached result
    goes through (probes, whitening choices and sweeps, bootstrap draws, fine-tunes, ctr
    models). A damaged entry, or one ``valid`` refuses, is moved aside (``quarantine``) and
    recomputed; a result ``keep`` refuses (e.g. a training its time cap cut short) is returned
    but not stored. No cache or no key: always computed."""
    if cache is None or key is None:
        return compute()
    path = cache.path(kind, key, codec.suffix)
    found = read_cached(path, codec.read)
    if found is not None:
        if valid is None or valid(found):
            return found
        quarantine(path, "not the expected content")
    result = compute()
    if keep is None or keep(result):
        codec.write(path, result)
    return result


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
