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
whose ids do not match; called before the run starts, so bad input fails fast with status 2),
``kind`` (``"reference"`` for rows a team cannot deploy, such as the known-answer ladder made
from ground truth; run.json ``row_kinds`` records it and the report never ranks such a row)
and ``built_by`` (set by the registry: the module of the factory that built it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from bench.core.cache import Cache
from bench.core.data import Dataset


@dataclass
class FitContext:
    """Everything ``fit`` may use: cache, device, seed, where logs go. The training budget is
    not here: each plugin's factory reads it with ``profile.budget(name, DEFAULTS)``."""

    cache: Cache
    device: str = "cpu"
    seed: int = 0
    log_dir: Path | None = None
    progress: bool = True


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
