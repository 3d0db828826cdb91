"""``precomputed:PATH``: bring your own vectors (.npy/.npz with ``ids`` and ``vectors``, or a
parquet/CSV file with an ``id`` column and either a ``vector`` list column or numeric columns).

Ids are matched to the dataset; missing, extra or duplicate ids are refused by count and example.
Ids are always text: a CSV id column of ``000, 001`` stays ``"000", "001"``. The match is checked
before the run starts (``validate``), so a file that does not fit the dataset fails fast.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.core.cache import DamagedFileError, load_npz
from bench.core.extractor import FitContext
from bench.core.registry import check_options, extractor
from bench.embed.embeddings import EmbeddingError, Embeddings, align


def read_vectors(path: str | Path) -> Embeddings:
    """Read ids and vectors from a file, with errors that name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingError(f"precomputed embeddings: no such file {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        raise EmbeddingError(
            f"{path}: a .npy holds one array; save ids and vectors together with "
            "np.savez(path, ids=..., vectors=...)"
        )
    if suffix == ".npz":
        try:
            data = load_npz(path)
        except DamagedFileError as error:
            pickled = object_arrays(path)
            if pickled:
                raise EmbeddingError(
                    f"precomputed embeddings {path}: array(s) {pickled} have dtype object "
                    f"(pandas' .values / .to_numpy() give one), which np.savez stores pickled "
                    f"and this tool never unpickles; save text ids and float vectors: "
                    f"np.savez(path, ids=ids.astype(str), vectors=vectors.astype('float32'))"
                    ) from None
            detail = str(error).removeprefix(f"{path}: ")
            raise EmbeddingError(f"precomputed embeddings {path}: {detail}; expected an .npz "
                                 "written by np.savez(path, ids=..., vectors=...)") from None
        missing = {"ids", "vectors"} - set(data)
        if missing:
            raise EmbeddingError(f"{path}: missing arrays {sorted(missing)}; has {sorted(data)}")
        ids, vectors = data["ids"], data["vectors"]
    elif suffix in (".parquet", ".csv"):
        frame = read_table(path, suffix)
        if "id" not in frame.columns:
            raise EmbeddingError(f"{path}: no 'id' column; columns are {list(frame.columns)[:8]}")
        if len(frame) == 0:
            raise EmbeddingError(f"{path}: no rows")
        empty = frame["id"].isna()
        if empty.any():
            raise EmbeddingError(f"{path}: {int(empty.sum())} rows have an empty id, first at "
                                 f"row {int(np.flatnonzero(empty)[0]) + 1}")
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


def object_arrays(path: Path) -> list[str]:
    """Names of the .npz members whose dtype is object (stored pickled), read from the .npy
    headers alone: nothing is unpickled. [] when the file is not a readable archive."""
    found = []
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                with archive.open(name) as member:
                    version = np.lib.format.read_magic(member)
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)(member)
                if header[2].hasobject:
                    found.append(name.removesuffix(".npy"))
    except (OSError, ValueError, zipfile.BadZipFile):
        return []
    return found


def read_table(path: Path, suffix: str) -> pd.DataFrame:
    """A parquet or CSV table; a CSV's ``id`` column is read as text (zero-padded ids such as
    ``000`` stay as written)."""
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype={"id": str})
    except pd.errors.EmptyDataError:
        raise EmbeddingError(f"{path}: the file is empty") from None
    except (OSError, ValueError) as error:
        raise EmbeddingError(f"{path}: cannot be read ({type(error).__name__}: {error})") from None


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

    def validate(self, dataset) -> None:
        """Refuse, before the run starts, vectors whose ids do not match the dataset's."""
        align(self._embeddings, dataset.ids, source=f"precomputed embeddings {self.path}")

    def fit(self, dataset, ctx: FitContext) -> None:
        """Vectors are given; nothing to learn."""

    def embed(self, dataset, rows: np.ndarray) -> np.ndarray:
        aligned = align(self._embeddings, dataset.ids, source=str(self.path))
        return aligned.take(rows)


@extractor("precomputed")
def make_precomputed(options: dict[str, str], profile) -> PrecomputedExtractor:
    check_options("precomputed", options, ("arg", "path"))
    path = options.get("arg") or options.get("path")
    if not path:
        raise ValueError("precomputed needs a file: --extractors precomputed:PATH")
    return PrecomputedExtractor(path)
