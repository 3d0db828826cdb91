"""The one registry of extractors, datasets and tasks, and where their plugins come from.

Plugins come from the plugin folders, entry points (groups ``bench.extractors``,
``bench.datasets``, ``bench.tasks``) and ``--plugin PATH``. They register factories with the
``@extractor(name)`` / ``@dataset(name)`` decorators and ``bench.tasks.task(name)`` (which checks
a task's declaration first); the built-in tasks are the modules of ``bench.tasks``. A
plugin is a file (``extractors/pixels.py``) or a package, a folder holding ``__init__.py``
(``datasets/homestead/``) whose modules import each other relatively (``from .render import
render``). Both are imported by path under the private ``bench_plugins`` namespace, so
``datasets/`` never shadows Hugging Face's ``datasets`` package. A plugin that fails to import
is recorded in ``load_errors`` with a one-line message and the rest load as usual.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import pkgutil
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALLED = Path(__file__).resolve().parents[1] / "plugins"  # a wheel's copy (pyproject.toml)


def builtin_folder(name: str) -> Path:
    """A top-level folder of the checkout (``extractors``, ``datasets``, ``benchmarks``), or
    its copy inside an installed wheel (``bench/plugins/<name>``) when there is no checkout."""
    installed = INSTALLED / name
    return installed if installed.is_dir() else REPO_ROOT / name


PLUGIN_FOLDERS = {"extractors": builtin_folder("extractors"),
                  "datasets": builtin_folder("datasets")}
ENTRY_POINT_GROUPS = {"extractors": "bench.extractors", "datasets": "bench.datasets",
                      "tasks": "bench.tasks"}

ExtractorFactory = Callable[..., Any]
DatasetFactory = Callable[..., Any]

EXTRACTORS: dict[str, ExtractorFactory] = {}
DATASETS: dict[str, DatasetFactory] = {}
TASKS: dict[str, Callable[[], Any]] = {}  # bench.tasks.task registers them, checked


class SpecError(ValueError):
    """A request naming an unknown plugin or task, or an option a plugin does not take."""


@dataclass
class PluginError:
    source: str
    message: str

    def __str__(self) -> str:
        return f"plugin {self.source} failed to load: {self.message}"


load_errors: list[PluginError] = []
_loaded_sources: set[str] = set()


def extractor(name: str) -> Callable[[ExtractorFactory], ExtractorFactory]:
    """Register ``factory(options: dict[str, str], profile) -> Extractor`` under ``name``."""

    def register(factory: ExtractorFactory) -> ExtractorFactory:
        EXTRACTORS[name] = factory
        return factory

    return register


def dataset(name: str) -> Callable[[DatasetFactory], DatasetFactory]:
    """Register ``factory(cache: Cache, **options) -> Dataset`` under ``name``."""

    def register(factory: DatasetFactory) -> DatasetFactory:
        DATASETS[name] = factory
        return factory

    return register


def is_plugin_package(path: Path) -> bool:
    """A folder holding ``__init__.py`` (not a private ``_name`` or ``__pycache__``)."""
    return path.is_dir() and (path / "__init__.py").is_file() and not path.name.startswith("_")


def _module_name(path: Path) -> str:
    """``bench_plugins.<folder>.<name>``; a second plugin of the same folder and name from
    another place gets a suffix from its path, so it never replaces the first one's module."""
    name = f"bench_plugins.{path.parent.name}.{path.stem}"
    taken = sys.modules.get(name)
    if taken is not None and Path(getattr(taken, "__file__", "") or "").resolve() not in (
            path, path / "__init__.py"):
        name += "_" + hashlib.sha256(str(path).encode()).hexdigest()[:8]
    return name


def _one_line(error: BaseException) -> str:
    """``Type: message (file:line)``: the innermost frame of the plugin's own code (not of
    importlib), or the file and line a ``SyntaxError`` names."""
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not f.filename.startswith("<frozen")]
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    text = " ".join(str(error).split())
    if isinstance(error, SyntaxError) and error.filename:
        where, text = f" ({error.filename}:{error.lineno})", str(error.msg)
    return f"{type(error).__name__}: {text}{where}"


def load_file(path: str | os.PathLike) -> bool:
    """Import one plugin, a file or a package folder, by path; on failure record the error
    and return False."""
    path = Path(path).resolve()
    if str(path) in _loaded_sources:
        return True
    _loaded_sources.add(str(path))
    package = path.is_dir()
    module_name = _module_name(path)
    try:
        if package:
            # submodule_search_locations makes it a package: ``from .x import y`` inside it
            # resolves to ``<module_name>.x`` and is found in this folder.
            spec = importlib.util.spec_from_file_location(
                module_name, path / "__init__.py", submodule_search_locations=[str(path)])
        else:
            spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return True
    except Exception as error:  # noqa: BLE001 - a broken plugin must not stop the others
        for name in [n for n in sys.modules if n == module_name
                     or n.startswith(module_name + ".")]:
            sys.modules.pop(name, None)  # a package's half-imported submodules too
        load_errors.append(PluginError(str(path), _one_line(error)))
        return False


def _not_a_plugin(path: Path) -> str | None:
    """Why ``--plugin PATH`` cannot be loaded, or None when it is a file or a package."""
    if path.is_file():
        return None
    if not path.exists():
        return "no such file or folder"
    if not path.is_dir():
        return "not a file or a folder"
    if not (path / "__init__.py").is_file():
        return "a folder without __init__.py is not a plugin package"
    return None


def load_plugins(extra_files: tuple[str, ...] | list[str] = ()) -> list[PluginError]:
    """Load every plugin file and package of the plugin folders, every entry point and every
    extra file or package once; return the failures."""
    for folder in PLUGIN_FOLDERS.values():
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if (path.suffix == ".py" and path.is_file() and not path.name.startswith("_")
                        or is_plugin_package(path)):
                    load_file(path)
    for group in ENTRY_POINT_GROUPS.values():
        for point in entry_points(group=group):
            source = f"entry point {point.name} ({point.value})"
            if source in _loaded_sources:
                continue
            _loaded_sources.add(source)
            try:
                factory = point.load()
                if group.endswith("tasks"):
                    from bench.tasks import task  # checks the declaration, then registers

                    if callable(factory) and point.name not in TASKS:
                        task(point.name)(factory)
                    continue
                target = EXTRACTORS if group.endswith("extractors") else DATASETS
                if callable(factory) and point.name not in target:
                    target[point.name] = factory
            except Exception as error:  # noqa: BLE001
                load_errors.append(PluginError(source, f"{type(error).__name__}: {error}"))
    for path in extra_files:
        problem = _not_a_plugin(Path(path))
        if problem:
            load_errors.append(PluginError(str(path), problem))
            continue
        load_file(path)
    return list(load_errors)


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``name[:ARG[:ARG2...]][:key=value,key=value]``.

    Positional parts (``:``-separated, before the first part holding ``=``) become options
    ``arg``, ``arg2``, ``arg3``...; e.g. ``open_clip:ViT-B-32:/w/clip.pt`` gives
    ``{"arg": "ViT-B-32", "arg2": "/w/clip.pt"}`` and ``timm:resnet18:weights=/w/r18.pth``
    gives ``{"arg": "resnet18", "weights": "/w/r18.pth"}``. Option values may hold ``:``.
    ``name:ARG,key=value`` also works for a single positional (``folder:items/,workers=2``).
    """
    name, _, rest = spec.partition(":")
    positional: list[str] = []
    options: dict[str, str] = {}
    segments = rest.split(":") if rest else []
    while segments and "=" not in segments[0]:
        positional.append(segments.pop(0))
    if segments:
        parts = ":".join(segments).split(",")
        if not positional and "=" not in parts[0]:
            positional.append(parts.pop(0))
        for part in parts:
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise SpecError(f"spec {spec!r}: option {part!r} is not key=value")
            options[key.strip()] = value.strip()
    for i, value in enumerate(positional):
        if not value.strip():
            raise SpecError(f"spec {spec!r}: empty part {i + 1} after {name!r}")
        options["arg" if i == 0 else f"arg{i + 1}"] = value.strip()
    return name.strip(), options


def check_options(what: str, options: dict[str, Any], known: Any) -> None:
    """Refuse options a plugin does not take, naming the ones it does (as homestead does)."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise SpecError(f"{what}: unknown option{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")


def _unknown(kind: str, name: str, known: Any) -> SpecError:
    hint = ""
    failed = [e for e in load_errors if Path(e.source).stem == name or name in e.source]
    if failed:
        hint = f" ({failed[0]})"
    return SpecError(f"unknown {kind} {name!r}; known: {', '.join(sorted(known)) or 'none'}"
                     f"{hint}")


def build_extractor(spec: str, profile: Any) -> Any:
    """The extractor ``spec`` names, built by its plugin's factory. The factory's module is
    recorded on it as ``built_by`` (an adapter's factory builds a class defined elsewhere), so
    the embeddings key covers the plugin that made it (``bench.embed.key``)."""
    name, options = parse_spec(spec)
    if name not in EXTRACTORS:
        raise _unknown("extractor", name, EXTRACTORS)
    factory = EXTRACTORS[name]
    built = factory(options, profile)
    try:
        object.__setattr__(built, "built_by", getattr(factory, "__module__", None))
    except (AttributeError, TypeError):
        pass  # a class with __slots__: its own module is all the key can follow
    return built


def built_by(extractor: Any) -> str | None:
    """The module of the factory that built ``extractor`` (None when it was built by hand)."""
    value = getattr(extractor, "built_by", None)
    return value if isinstance(value, str) else None


def dataset_options(factory: DatasetFactory, name: str, options: dict[str, Any]
                    ) -> dict[str, Any]:
    """Check ``options`` against a dataset factory's keyword parameters and cast strings to the
    type of each default. A factory taking ``**options`` checks its own; one whose catch-all
    is named ``_`` (it ignores extras) is checked here, so no option is silently dropped."""
    try:
        parameters = list(inspect.signature(factory).parameters.values())[1:]  # after cache
    except (TypeError, ValueError):
        return options
    catch_all = [p for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD]
    if catch_all and catch_all[0].name != "_":
        return options
    named = {p.name: p for p in parameters
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                           inspect.Parameter.KEYWORD_ONLY)}
    check_options(f"dataset {name}", options, named)
    out = dict(options)
    for key, value in options.items():
        default = named[key].default
        if isinstance(value, str) and isinstance(default, bool):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise SpecError(f"dataset {name}: option {key}={value!r} is not true/false")
            out[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(value, str) and isinstance(default, int | float):
            try:
                out[key] = type(default)(value)
            except ValueError:
                kind = "an integer" if isinstance(default, int) else "a number"
                raise SpecError(f"dataset {name}: option {key}={value!r} is not {kind}") from None
    return out


def build_dataset(name: str, cache: Any, **options: Any) -> Any:
    if name not in DATASETS:
        raise _unknown("dataset", name, DATASETS)
    factory = DATASETS[name]
    return factory(cache, **dataset_options(factory, name, options))


def builtin_task_modules() -> dict[str, str]:
    """The built-in task modules (every module and package of ``bench.tasks``), by name."""
    import bench.tasks

    return {info.name: f"bench.tasks.{info.name}"
            for info in pkgutil.iter_modules(bench.tasks.__path__) if not info.name.startswith("_")}


def add_task(name: str, factory: Callable[[], Any]) -> None:
    """Register a task factory (``bench.tasks.task`` checks the declaration first)."""
    TASKS[name] = factory


def load_builtin_tasks() -> None:
    """Import every built-in task module once (each registers its tasks)."""
    for module in builtin_task_modules().values():
        importlib.import_module(module)


def task_names() -> list[str]:
    """Every registered task (built-in and plugins'), by name."""
    load_builtin_tasks()
    return sorted(TASKS)


def find_task(name: str) -> Any:
    """The task registered as ``name``; ``SpecError`` naming the known ones otherwise."""
    if name not in TASKS:
        load_builtin_tasks()
    if name not in TASKS:
        raise _unknown("task", name, TASKS)
    return TASKS[name]()
