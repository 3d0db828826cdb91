"""Digests of source code: what cached results made by code depend on.

Why: a cache entry must never outlive the code that made it. A plugin's digest covers its file
(every module of a plugin package); ``used_files`` follows the ``bench`` modules a piece of
code calls into, one import level deep, so a key covers what runs and nothing else.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import sys
import sysconfig
import types
from pathlib import Path
from typing import Any

_STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()
_PURELIB = Path(sysconfig.get_paths()["purelib"]).resolve()
# contracts and plumbing (registry, config, logs, cache, the protocols): never what a vector is
# computed by, so editing them invalidates nothing
PLUMBING = ("bench.core.",)


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
    inherits (e.g. ``bench/train/ssl.py``)."""
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


def _own_file(obj: Any) -> Path | None:
    """The source file of ``obj``: the suite's and its plugins' (installed or not), never the
    standard library's or another installed package's."""
    try:
        path = Path(inspect.getsourcefile(obj) or "").resolve()
    except (TypeError, OSError):
        return None
    module = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", "")
    ours = str(module or "").split(".")[0] in ("bench", "bench_plugins")
    if not path.is_file() or path.is_relative_to(_STDLIB) or (
            path.is_relative_to(_PURELIB) and not ours):
        return None
    return path


def _bench_modules_used(module: types.ModuleType) -> list[types.ModuleType]:
    """The ``bench`` modules (outside ``PLUMBING``) whose names ``module`` imported."""
    out: dict[str, types.ModuleType] = {}
    for value in vars(module).values():
        name = value.__name__ if isinstance(value, types.ModuleType) else \
            getattr(value, "__module__", None)
        if not isinstance(name, str) or not name.startswith("bench.") or \
                name.startswith(PLUMBING) or name == module.__name__:
            continue
        found = sys.modules.get(name)
        if found is not None:
            out[name] = found
    return list(out.values())


def used_files(*objects: Any) -> list[Path]:
    """The source files of ``objects`` (classes, functions or modules: their plugin files,
    the files of every class in their MRO) and of the ``bench`` modules those files import
    from, one level deep; outside the standard library and installed packages."""
    files: list[Path] = []

    def add(path: Path | None) -> None:
        if path is not None and path not in files:
            files.append(path)

    modules: list[types.ModuleType] = []
    for obj in objects:
        classes = obj.__mro__ if isinstance(obj, type) else (obj,)
        for part in classes:
            module = part if isinstance(part, types.ModuleType) else \
                sys.modules.get(getattr(part, "__module__", "") or "")
            if module is None or _own_file(module) is None:
                continue
            for path in (plugin_files(part) if isinstance(part, type) else [_own_file(module)]):
                add(path)
            if module not in modules:
                modules.append(module)
    for module in modules:
        for used in _bench_modules_used(module):
            add(_own_file(used))
    return files
