"""Finds extractor and dataset plugins: the plugin folders, entry points and ``--plugin FILE``.

Plugins register factories with the ``@extractor(name)`` / ``@dataset(name)`` decorators. Files
are imported by path under the private ``bench_plugins`` namespace, so ``datasets/`` never
shadows Hugging Face's ``datasets`` package. A plugin that fails to import is recorded in
``load_errors`` and the rest load as usual.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
PLUGIN_FOLDERS = {"extractors": REPO_ROOT / "extractors", "datasets": REPO_ROOT / "datasets"}
ENTRY_POINT_GROUPS = {"extractors": "bench.extractors", "datasets": "bench.datasets"}

ExtractorFactory = Callable[..., Any]
DatasetFactory = Callable[..., Any]

EXTRACTORS: dict[str, ExtractorFactory] = {}
DATASETS: dict[str, DatasetFactory] = {}


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


def load_file(path: str | os.PathLike) -> bool:
    """Import one plugin file by path; on failure record the error and return False."""
    path = Path(path).resolve()
    if str(path) in _loaded_sources:
        return True
    _loaded_sources.add(str(path))
    module_name = f"bench_plugins.{path.parent.name}.{path.stem}"
    try:
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return True
    except Exception as error:  # noqa: BLE001 - a broken plugin must not stop the others
        sys.modules.pop(module_name, None)
        last = traceback.extract_tb(error.__traceback__)[-1]
        where = f"{last.filename}:{last.lineno}"
        load_errors.append(PluginError(str(path), f"{type(error).__name__}: {error} ({where})"))
        return False


def load_plugins(extra_files: tuple[str, ...] | list[str] = ()) -> list[PluginError]:
    """Load every plugin folder file, entry point and extra file once; return the failures."""
    for folder in PLUGIN_FOLDERS.values():
        if folder.is_dir():
            for path in sorted(folder.glob("*.py")):
                if not path.name.startswith("_"):
                    load_file(path)
    for group in ENTRY_POINT_GROUPS.values():
        for point in entry_points(group=group):
            source = f"entry point {point.name} ({point.value})"
            if source in _loaded_sources:
                continue
            _loaded_sources.add(source)
            try:
                factory = point.load()
                target = EXTRACTORS if group.endswith("extractors") else DATASETS
                if callable(factory) and point.name not in target:
                    target[point.name] = factory
            except Exception as error:  # noqa: BLE001
                load_errors.append(PluginError(source, f"{type(error).__name__}: {error}"))
    for path in extra_files:
        if not Path(path).is_file():
            load_errors.append(PluginError(str(path), "no such file"))
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
                raise ValueError(f"spec {spec!r}: option {part!r} is not key=value")
            options[key.strip()] = value.strip()
    for i, value in enumerate(positional):
        if not value.strip():
            raise ValueError(f"spec {spec!r}: empty part {i + 1} after {name!r}")
        options["arg" if i == 0 else f"arg{i + 1}"] = value.strip()
    return name.strip(), options


def build_extractor(spec: str, profile: Any) -> Any:
    name, options = parse_spec(spec)
    if name not in EXTRACTORS:
        known = ", ".join(sorted(EXTRACTORS)) or "none"
        raise KeyError(f"unknown extractor {name!r}; known: {known}")
    return EXTRACTORS[name](options, profile)


def build_dataset(name: str, cache: Any, **options: Any) -> Any:
    if name not in DATASETS:
        known = ", ".join(sorted(DATASETS)) or "none"
        raise KeyError(f"unknown dataset {name!r}; known: {known}")
    return DATASETS[name](cache, **options)
