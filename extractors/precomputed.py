"""``precomputed:PATH``: bring your own vectors (.npy/.npz with ``ids`` and ``vectors``, or a
parquet/CSV file with an ``id`` column and either a ``vector`` list column or numeric columns).

Ids are matched to the dataset; missing, extra or duplicate ids are refused by count and example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.embeddings import EmbeddingError, Embeddings, align
from bench.extractor import FitContext
from bench.registry import extractor


def read_vectors(path: str | Path) -> Embeddings:
    """Read ids and vectors from a file, with errors that name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingError(f"precomputed embeddings: no such file {path}")
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy"):
        try:
            data = np.load(path, allow_pickle=False)
        except ValueError as error:
            raise EmbeddingError(f"{path}: cannot read without pickle ({error})") from error
        if suffix == ".npy":
            raise EmbeddingError(
                f"{path}: a .npy holds one array; save ids and vectors together with "
                "np.savez(path, ids=..., vectors=...)"
            )
        missing = {"ids", "vectors"} - set(data.files)
        if missing:
            raise EmbeddingError(f"{path}: missing arrays {sorted(missing)}; has {data.files}")
        ids, vectors = data["ids"], data["vectors"]
    elif suffix in (".parquet", ".csv"):
        # ids as written: a CSV id such as 000 must not become the integer 0
        frame = (pd.read_parquet(path) if suffix == ".parquet"
                 else pd.read_csv(path, dtype={"id": str}))
        if "id" not in frame.columns:
            raise EmbeddingError(f"{path}: no 'id' column; columns are {list(frame.columns)[:8]}")
        ids = frame["id"].astype(str).to_numpy()
        if "vector" in frame.columns:
            vectors = np.stack([np.asarray(v, dtype=np.float32) for v in frame["vector"]])
        else:
            numeric = frame.drop(columns=["id"])
            bad = [c for c in numeric.columns if not pd.api.types.is_numeric_dtype(numeric[c])]
            if bad:
                raise EmbeddingError(f"{path}: non-numeric columns {bad[:5]} (count {len(bad)})")
            vectors = numeric.to_numpy(dtype=np.float32)
    else:
        raise EmbeddingError(f"{path}: unsupported format {suffix!r}; use .npz, .parquet or .csv")
    return Embeddings(np.asarray(ids).astype(str), np.asarray(vectors, dtype=np.float32),
                      {"source": str(path)})


class PrecomputedExtractor:
    modalities: tuple[str, ...] = ()

    def __init__(self, path: str):
        self.path = Path(path)
        self.name = f"precomputed:{self.path.stem}"
        self._embeddings = read_vectors(self.path)
        self.dim = self._embeddings.dim

    def config(self) -> dict[str, Any]:
        stat = self.path.stat()
        return {"path": str(self.path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime}

    def fit(self, dataset, ctx: FitContext) -> None:
        """Vectors are given; nothing to learn."""

    def embed(self, dataset, rows: np.ndarray) -> np.ndarray:
        aligned = align(self._embeddings, dataset.ids, source=str(self.path))
        return aligned.take(rows)


@extractor("precomputed")
def make_precomputed(options: dict[str, str], profile) -> PrecomputedExtractor:
    path = options.get("arg") or options.get("path")
    if not path:
        raise ValueError("precomputed needs a file: --extractors precomputed:PATH")
    return PrecomputedExtractor(path)
