"""Embeddings: ids + float32 vectors + metadata, validated, saved atomically, loaded without pickle."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.core.cache import DamagedFileError, load_npz, save_npz


class EmbeddingError(ValueError):
    """Refused embeddings; the message says what is wrong, where and how many."""


@dataclass
class Embeddings:
    ids: np.ndarray  # str [n]
    vectors: np.ndarray  # float32 [n, dim]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids).astype(str)
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        validate(self.ids, self.vectors, source=self.meta.get("source", "embeddings"))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Vectors for row positions (embeddings are stored in dataset row order)."""
        return self.vectors[np.asarray(rows, dtype=np.int64)]

    def with_vectors(self, vectors: np.ndarray, **meta: Any) -> Embeddings:
        return Embeddings(self.ids, vectors, {**self.meta, **meta})

    def save(self, path: str | os.PathLike) -> Path:
        meta = json.dumps(self.meta, sort_keys=True, default=str)
        return save_npz(path, ids=self.ids, vectors=self.vectors, meta=np.array(meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Embeddings:
        try:
            data = load_npz(path)
        except DamagedFileError as error:
            raise EmbeddingError(str(error)) from error
        except (OSError, ValueError) as error:
            raise EmbeddingError(f"{path}: cannot read embeddings ({error})") from error
        missing = {"ids", "vectors"} - set(data)
        if missing:
            raise EmbeddingError(f"{path}: missing arrays {sorted(missing)}")
        meta = json.loads(str(data["meta"])) if "meta" in data else {}
        meta.setdefault("source", str(path))
        return cls(data["ids"], data["vectors"], meta)


def validate(ids: np.ndarray, vectors: np.ndarray, source: str = "embeddings") -> None:
    """Refuse wrong shapes, NaN/Inf and duplicate ids, naming the count and an example."""
    if vectors.ndim != 2:
        raise EmbeddingError(f"{source}: vectors must be 2-D [n, dim], got shape {vectors.shape}")
    if len(ids) != len(vectors):
        raise EmbeddingError(f"{source}: {len(ids)} ids but {len(vectors)} vectors")
    if vectors.shape[1] == 0:
        raise EmbeddingError(f"{source}: vectors have dimension 0")
    bad_rows = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if len(bad_rows):
        raise EmbeddingError(
            f"{source}: {len(bad_rows)} vectors contain NaN or Inf, e.g. id {str(ids[bad_rows[0]])!r}"
        )
    unique, counts = np.unique(ids, return_counts=True)
    duplicated = unique[counts > 1]
    if len(duplicated):
        raise EmbeddingError(
            f"{source}: {len(duplicated)} duplicate ids, e.g. {str(duplicated[0])!r}"
        )


def check_batch(vectors: np.ndarray, rows: np.ndarray, source: str,
                dim: int | None = None) -> np.ndarray:
    """An extractor's output for the dataset ``rows`` of one batch (or shard) as float32,
    or EmbeddingError naming ``source``, the rows and the shape: it must be exactly
    [len(rows), dim] (2-D after the extractor's flattening; numpy would broadcast a [1, dim]
    output into identical rows) and finite. Checked before anything is cached."""
    vectors = np.asarray(vectors, dtype=np.float32)
    rows = np.asarray(rows)
    where = (f"the {len(rows)} images at dataset rows {int(rows[0])}-{int(rows[-1])}"
             if len(rows) else "an empty batch")
    expected = f"[{len(rows)}, {dim if dim is not None else 'dim'}]"
    if (vectors.ndim != 2 or len(vectors) != len(rows)
            or (dim is not None and vectors.shape[1] != dim)):
        raise EmbeddingError(f"{source}: returned shape {list(vectors.shape)} for {where}; an "
                             f"extractor must return one vector per image, {expected}; "
                             f"nothing was cached")
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if len(bad):
        raise EmbeddingError(f"{source}: {len(bad)} of the vectors for {where} contain NaN or "
                             f"Inf, e.g. dataset row {int(rows[bad[0]])}; nothing was cached")
    return vectors


def align(embeddings: Embeddings, dataset_ids: np.ndarray, source: str = "embeddings") -> Embeddings:
    """Reorder embeddings to the dataset's row order; refuse missing or unknown ids."""
    dataset_ids = np.asarray(dataset_ids).astype(str)
    position = {item: i for i, item in enumerate(embeddings.ids)}
    missing = [item for item in dataset_ids if item not in position]
    extra = np.setdiff1d(embeddings.ids, dataset_ids)
    problems = []
    if missing:
        problems.append(f"{len(missing)} dataset ids have no vector (e.g. {str(missing[0])!r})")
    if len(extra):
        problems.append(f"{len(extra)} ids are not in the dataset (e.g. {str(extra[0])!r})")
    if problems:
        raise EmbeddingError(f"{source}: " + "; ".join(problems))
    order = np.fromiter((position[item] for item in dataset_ids), dtype=np.int64)
    return Embeddings(dataset_ids, embeddings.vectors[order], embeddings.meta)
