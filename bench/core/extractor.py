"""What an extractor plugin must provide: a small protocol, no base class to inherit.

An extractor has a ``name``, a ``dim``, the ``modalities`` it reads, an optional ``fit`` for
extractors that learn (cached by the extractor itself under ``ctx.cache``), and ``embed`` which
returns float32 vectors [n, dim] for dataset rows. Backbone extractors also expose
``backbone()`` (a torch module mapping images to pooled features) and ``preprocess(images)``
so tasks can fine-tune them.

Optional, checked with ``getattr``: ``fit_cut`` (after ``fit``: a one-line reason when a time
safety stop ended training before its budget, else None; the runner then marks the
extractor's cells and does not cache its embeddings) and ``validate(dataset)`` (raise a
``ValueError`` naming the problem when the extractor cannot serve this dataset, e.g. vectors
whose ids do not match; called before the run starts, so bad input fails fast with status 2).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from bench.core.cache import Cache
from bench.core.data import Dataset

# The project's code every extractor's vectors pass through; its digest keys cached embeddings.
PROJECT_EXTRACTOR_CODE = ("bench/core/extractor.py", "bench/train/backbones.py", "bench/train/augment.py",
                          "bench/train/loop.py",
                          "bench/embed/embeddings.py")
_ROOT = Path(__file__).resolve().parents[2]
_STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


@dataclass
class FitContext:
    """Everything ``fit`` may use: cache, device, seed, where logs go. The training budget is
    not here: each plugin's factory reads it with ``profile.budget(name, DEFAULTS)``."""

    cache: Cache
    device: str = "cpu"
    seed: int = 0
    log_dir: Path | None = None
    progress: bool = True


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def files_digest(paths: list[Path] | tuple[Path, ...]) -> str:
    """A short digest of these files' contents (not their names or places)."""
    digest = hashlib.sha256()
    for path in paths:
        stat = Path(path).stat()
        digest.update(_file_digest(str(path), stat.st_mtime_ns, stat.st_size).encode())
    return digest.hexdigest()[:16]


def _package_files(cls: type) -> list[Path]:
    """Every ``.py`` file of the plugin package ``cls`` belongs to (``bench_plugins.<folder>.
    <package>``, loaded by the registry from a folder), sorted; none for a single-file plugin."""
    parts = getattr(cls, "__module__", "").split(".")
    if len(parts) < 4 or parts[0] != "bench_plugins":
        return []
    package = sys.modules.get(".".join(parts[:3]))
    folders = getattr(package, "__path__", None) or []
    return sorted(path.resolve() for folder in folders for path in Path(folder).rglob("*.py")
                  if "__pycache__" not in path.parts)


def plugin_files(cls: type) -> list[Path]:
    """The file that defines ``cls`` and, when it is part of a plugin package, every other
    module of that package (a helper module's edit changes the package's digest too)."""
    try:
        own = Path(inspect.getsourcefile(cls) or "").resolve()
    except (TypeError, OSError):
        return []  # builtins
    if not own.is_file():
        return []
    return [own, *(path for path in _package_files(cls) if path != own)]


def source_files(cls: type) -> list[Path]:
    """The source files of a class and its bases, outside the standard library: the plugin's
    own file (all of its package's modules for a package plugin), and any shared code it
    inherits (e.g. ``bench/train/loop.py``)."""
    files: list[Path] = []
    for base in cls.__mro__:
        for path in plugin_files(base):
            if not path.is_relative_to(_STDLIB) and path not in files:
                files.append(path)
    return files


def source_digest(cls: type) -> str:
    """Digest of the plugin that defines ``cls``: its file, or every module of its package."""
    files = plugin_files(cls)
    return files_digest(files) if files else "unknown"


def code_digest(extractor: Any) -> str:
    """What cached embeddings depend on besides ``config()``: the plugin's source files (its
    class and bases) and the project's extractor code (``PROJECT_EXTRACTOR_CODE``). Editing a
    plugin's ``embed`` therefore never reuses vectors the old code made."""
    project = [_ROOT / name for name in PROJECT_EXTRACTOR_CODE if (_ROOT / name).is_file()]
    files = source_files(type(extractor))
    return files_digest([*files, *(p for p in project if p not in files)])


@runtime_checkable
class Extractor(Protocol):
    name: str
    dim: int
    modalities: tuple[str, ...]

    def fit(self, dataset: Dataset, ctx: FitContext) -> None: ...

    def embed(self, dataset: Dataset, rows: np.ndarray) -> np.ndarray: ...

    def config(self) -> dict[str, Any]:
        """JSON-able settings that, with the dataset fingerprint, key the embeddings cache."""
        ...


@runtime_checkable
class BackboneExtractor(Extractor, Protocol):
    def backbone(self) -> Any: ...
