"""The embeddings cache key: the data, the extractor's settings and the code that computes them.

Why: cached vectors must never outlive the code that made them, and editing code a vector never
passes through must not throw vectors away. The key therefore follows the code an extractor
runs (``code_files``): the module of every class in its MRO and the plugin module that built it
(``registry.built_by``: an adapter's factory in ``extractors/timm_models.py`` builds a class of
``bench/adapters/shared.py``), the ``bench`` modules those import from (one level:
``bench.core.code.used_files``), and the image streaming of a dataset read from files.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

from bench.core import registry
from bench.core.cache import CODE_VERSION, Cache, fingerprint
from bench.core.code import files_digest, used_files
from bench.core.data import Dataset


def code_files(extractor: Any, dataset: Dataset | None = None) -> list[Path]:
    """The source files an extractor's vectors pass through (see the module docstring)."""
    objects: list[Any] = [type(extractor)]
    builder = sys.modules.get(registry.built_by(extractor) or "")
    if builder is not None:
        objects.append(builder)
    if dataset is not None and getattr(dataset, "reader", None) is not None:
        from bench.embed import streaming  # a folder's images are decoded there

        objects.append(streaming)
    return used_files(*objects)


def code_digest(extractor: Any, dataset: Dataset | None = None) -> str:
    """A short digest of ``code_files``."""
    return files_digest(code_files(extractor, dataset))


def embeddings_key(extractor: Any, dataset: Dataset) -> str:
    """What cached embeddings depend on: the data, the extractor's name and ``config()``, the
    format (``CODE_VERSION``) and the code (``code_digest``)."""
    return fingerprint(dataset.fingerprint, extractor.name, extractor.config(), CODE_VERSION,
                       code_digest(extractor, dataset))


def embeddings_path(extractor: Any, dataset: Dataset, cache: Cache,
                    key: str | None = None) -> Path:
    """Where the cached embeddings live (``key``: ``embeddings_key``, when already computed:
    it hashes source files)."""
    key = key or embeddings_key(extractor, dataset)
    return cache.path("embeddings", f"{dataset.name.replace(':', '_')}-{key}", ".npz")


def embeddings_meta(extractor: Any, dataset: Dataset, key: str | None) -> dict[str, Any]:
    """What cached embeddings record; ``key`` None for those of a cut training (tasks then
    cache nothing made from them)."""
    return {"extractor": extractor.name, "config": extractor.config(), "fingerprint": key,
            "dataset": dataset.name, "created": dt.datetime.now().isoformat(timespec="seconds"),
            "source": extractor.name}
