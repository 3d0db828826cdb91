"""The two pictures ``results.csv`` cannot rebuild: an embedding map and a KNN picture grid.

Computed by the runner, never by the report: the runner hands each extractor's embeddings to
:class:`RunArtifacts` as it goes (only the small sample is kept, not the full matrices) and saves
two files into the run folder, which ``bench report`` reads (``bench.report.artifacts``) to redraw
the page from the run folder alone:

- ``artifacts/embeddings_sample.npz``: ``ids`` and ``label__<column>`` for up to 2,000 test
  content items (style, scene, category where present), ``extractors`` (names) and
  ``vectors_<i>``: each extractor's raw vectors of those items, reduced to their top 50 principal
  components (enough for a PCA map and for t-SNE, and small on disk), float32.
- ``artifacts/knn_grid.npz``: ``query_images`` uint8 [q, H, W, 3] for a few seed contents,
  ``query_ids``, ``query_labels``, ``label_column`` and per extractor ``neighbor_images_<i>`` uint8
  [q, 5, H, W, 3], ``neighbor_ids_<i>`` and ``neighbor_labels_<i>``: the top-5 neighbours among
  the test content items (raw vectors, Euclidean, self excluded, as in the ``knn`` task).

Neighbours come from :mod:`bench.search.index` (FAISS). Everything is saved atomically without pickle.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bench.core.cache import save_npz
from bench.core.data import Dataset
from bench.embed.embeddings import Embeddings

SAMPLE_FILE = "embeddings_sample.npz"
GRID_FILE = "knn_grid.npz"
LABEL_COLUMNS = ("style", "scene", "category")
MAX_SAMPLE = 2000
N_COMPONENTS = 50
N_QUERIES = 5
TOP_K = 5

log = logging.getLogger(__name__)


def content_rows(dataset: Dataset) -> np.ndarray:
    """Test-split content covers (all test items when the dataset has no roles), as in ``knn``."""
    rows = dataset.rows(role="content", split="test")
    return rows if len(rows) else dataset.rows(split="test")


def label_columns(dataset: Dataset, rows: np.ndarray) -> list[str]:
    table = dataset.table.iloc[rows]
    return [c for c in LABEL_COLUMNS if c in table.columns and table[c].notna().any()]


def sample_rows(rows: np.ndarray, limit: int = MAX_SAMPLE, seed: int = 0) -> np.ndarray:
    if len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))


def query_rows(dataset: Dataset, rows: np.ndarray, column: str | None,
               n: int = N_QUERIES) -> np.ndarray:
    """A handful of seed contents, one per label value where possible (deterministic)."""
    if column is None:
        return rows[np.linspace(0, len(rows) - 1, num=min(n, len(rows))).astype(int)]
    labels = dataset.table[column].iloc[rows].astype(str).to_numpy()
    firsts = [rows[np.flatnonzero(labels == v)[0]] for v in sorted(set(labels))]
    picked = np.asarray(firsts[:: max(1, len(firsts) // n)][:n], dtype=np.int64)
    return picked


def principal_components(vectors: np.ndarray, k: int = N_COMPONENTS) -> np.ndarray:
    """Vectors projected on their top-k principal directions, float32 (scikit-learn's PCA,
    randomized solver: a second or less even for a few thousand dimensions)."""
    from sklearn.decomposition import PCA

    k = min(k, *vectors.shape)
    pca = PCA(n_components=k, svd_solver="randomized" if k < min(vectors.shape) else "full",
              random_state=0)
    return pca.fit_transform(vectors.astype(np.float32)).astype(np.float32)


class RunArtifacts:
    """Collects, per extractor, the sample's reduced vectors and the grid's neighbours.

    Pictures are extras: a failure is logged and kept in ``errors`` (dicts shaped like the
    runner's ``run.json`` errors) and never raised, so it cannot cost a run its results.
    """

    def __init__(self, dataset: Dataset, max_sample: int = MAX_SAMPLE, n_queries: int = N_QUERIES,
                 top_k: int = TOP_K) -> None:
        self.dataset = dataset
        self.names: list[str] = []
        self.reduced: list[np.ndarray] = []
        self.neighbors: list[np.ndarray] = []  # dataset row positions [q, k]
        self.errors: list[dict[str, str]] = []
        self.pool = self.sample = self.queries = np.array([], dtype=np.int64)
        self.columns: list[str] = []
        self.grid_column: str | None = None
        self.top_k = 0
        with self._guard("choosing the sample"):
            self.pool = content_rows(dataset)
            self.columns = label_columns(dataset, self.pool)
            self.sample = sample_rows(self.pool, max_sample)
            self.grid_column = self.columns[0] if self.columns else None
            self.queries = query_rows(dataset, self.pool, self.grid_column, n_queries)
            self.top_k = min(top_k, max(0, len(self.pool) - 1))

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except Exception as error:  # noqa: BLE001 - pictures must never sink a run
            message = f"{type(error).__name__}: {error}"
            log.warning("run pictures, %s: %s", what, message)
            self.errors.append({"where": f"run pictures ({what})", "error": message,
                                "traceback": traceback.format_exc(limit=4)})

    def add(self, name: str, embeddings: Embeddings) -> None:
        """Keep what the pictures need from one extractor's (raw) embeddings."""
        if len(self.sample) < 2 or self.top_k < 1:
            return
        from bench.search import index as bench_index

        with self._guard(name):
            reduced = principal_components(embeddings.take(self.sample))
            pool_vectors = embeddings.take(self.pool)
            self_ids = np.searchsorted(self.pool, self.queries)
            _, found = bench_index.search(pool_vectors, pool_vectors[self_ids], self.top_k,
                                          exclude_self=True, self_ids=self_ids)
            self.names.append(name)
            self.reduced.append(reduced)
            self.neighbors.append(self.pool[found])

    def save(self, run_dir: str | Path) -> list[Path]:
        """Write both files into ``run_dir/artifacts``; nothing when no extractor was added."""
        if not self.names:
            return []
        written: list[Path] = []
        with self._guard("saving"):
            folder = Path(run_dir) / "artifacts"
            table = self.dataset.table
            labels = {f"label__{c}": table[c].iloc[self.sample].astype(str).to_numpy(dtype=str)
                      for c in self.columns}
            vectors = {f"vectors_{i}": v for i, v in enumerate(self.reduced)}
            written.append(save_npz(folder / SAMPLE_FILE, ids=self.dataset.ids[self.sample],
                                    extractors=np.array(self.names, dtype=str), **labels,
                                    **vectors))
            written.append(self._save_grid(folder / GRID_FILE))
        return written

    def _labels(self, rows: np.ndarray) -> np.ndarray:
        if self.grid_column is None:
            return np.full(np.shape(rows), "", dtype=str)
        column = self.dataset.table[self.grid_column].astype(str).to_numpy(dtype=str)
        return column[rows]

    def _save_grid(self, path: Path) -> Path:
        grid: dict[str, np.ndarray] = {
            "query_images": self.dataset.images(self.queries),
            "query_ids": self.dataset.ids[self.queries],
            "query_labels": self._labels(self.queries),
            "label_column": np.array(self.grid_column or ""),
            "extractors": np.array(self.names, dtype=str),
        }
        for i, found in enumerate(self.neighbors):
            images = self.dataset.images(found.reshape(-1))
            grid[f"neighbor_images_{i}"] = images.reshape(*found.shape, *images.shape[1:])
            grid[f"neighbor_ids_{i}"] = self.dataset.ids[found]
            grid[f"neighbor_labels_{i}"] = self._labels(found)
        return save_npz(path, **grid)


def save_run_artifacts(run_dir: str | Path, dataset: Dataset,
                       embeddings_by_extractor: dict[str, Embeddings]) -> list[Path]:
    """Compute and save both artifact files from a dataset and ``{extractor: Embeddings}``."""
    collector = RunArtifacts(dataset)
    for name, embeddings in embeddings_by_extractor.items():
        collector.add(name, embeddings)
    written = collector.save(run_dir)
    if collector.errors:
        first = collector.errors[0]
        raise RuntimeError(f"{len(collector.errors)} error(s), first in {first['where']}: "
                           f"{first['error']}")
    return written
