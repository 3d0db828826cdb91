"""The variants a task sees: ``raw`` vectors and ``w``, BERT-whitened on the task's population.

Whitening is fitted per task on the train-split rows of the population the task evaluates (the
content covers for knn, the product shots for classify, ...: ``task.population(dataset)``), so a
task's test items never inform it and the transform suits the items it compares. Its dimension
``k`` is an option (``auto`` by default: chosen on those train rows by the agreement of their
neighbours on the task's own labels, ``task.whitening_labels``, see
:func:`bench.whitening.choose_k`); what was fitted is returned for run.json.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from bench.cache import Cache, array_digest, read_cached, write_json
from bench.data import LABEL_COLUMNS, Dataset
from bench.embeddings import Embeddings
from bench.whitening import SELECTION_NEIGHBOURS, Whitening, choose_k, fit_whitening, k_grid

DEFAULTS = {"k": "auto", "shrinkage": 0.0}
VECTOR_VARIANTS = ("raw", "w")  # what this module makes; other variants are the task's own


def population(task: Any, dataset: Dataset) -> np.ndarray:
    """The task's population, or every row for a task that does not declare one."""
    declared = getattr(task, "population", None)
    return np.asarray(declared(dataset)) if callable(declared) else np.arange(len(dataset))


def train_rows(task: Any, dataset: Dataset) -> np.ndarray:
    rows = population(task, dataset)
    return rows[dataset.table["split"].iloc[rows].to_numpy() == "train"]


def available(task: Any, dataset: Dataset) -> tuple[str, ...]:
    """The task's declared variants this dataset allows: ``w`` needs at least two train rows
    in the task's population (what ``for_task`` fits on); a reference row that reads no
    vectors (ctr's ID-only ranker) is reported for these."""
    declared = tuple(getattr(task, "variants", ("raw",)))
    return tuple(v for v in declared if v != "w" or len(train_rows(task, dataset)) >= 2)


def fit_for_task(embeddings: Embeddings, dataset: Dataset, task: Any,
                 options: dict[str, Any] | None = None,
                 cache: Cache | None = None) -> Whitening | None:
    """The task's whitening, or None when its population has fewer than 2 train rows."""
    options = {**DEFAULTS, **(options or {})}
    rows = train_rows(task, dataset)
    if len(rows) < 2:
        return None
    vectors = embeddings.take(rows)
    shrinkage = float(options["shrinkage"])
    scores: dict[int, float] = {}
    if str(options["k"]) == "auto":
        columns = getattr(task, "whitening_labels", LABEL_COLUMNS)
        k, scores = cached_choice(cache, vectors, train_labels(dataset, rows, columns),
                                  shrinkage)
    else:
        k = None if str(options["k"]) in ("full", "none", "0") else int(options["k"])
    whitening = fit_whitening(vectors, k, shrinkage)
    whitening.record.update({"k_option": str(options["k"]), "fit_rows": "train split of "
                             f"the {getattr(task, 'name', 'task')} population",
                             "selection_scores": {str(k_): v for k_, v in scores.items()}})
    return whitening


def cached_choice(cache: Cache | None, vectors: np.ndarray, labels: dict[str, np.ndarray],
                  shrinkage: float) -> tuple[int, dict[int, float]]:
    """``choose_k``, cached under a hash of the vectors, labels and settings: a re-run with
    warm caches does not redo the leave-one-out searches."""
    if cache is None:
        return choose_k(vectors, labels, shrinkage)
    key = array_digest(shrinkage, SELECTION_NEIGHBOURS, k_grid(vectors.shape[1]),
                       np.asarray(vectors, dtype=np.float64),
                       *[np.asarray(labels[c], dtype=str) for c in sorted(labels)], sorted(labels))
    path = cache.path("whitening_k", key, ".json")
    found = read_cached(path, lambda p: json.loads(p.read_text(encoding="utf-8")))
    if isinstance(found, dict) and "k" in found:
        return int(found["k"]), {int(k): float(v) for k, v in found["scores"].items()}
    k, scores = choose_k(vectors, labels, shrinkage)
    write_json(path, {"k": k, "scores": {str(k_): v for k_, v in scores.items()}})
    return k, scores


def train_labels(dataset: Dataset, rows: np.ndarray,
                 columns: tuple[str, ...] = LABEL_COLUMNS) -> dict[str, np.ndarray]:
    """The task's label columns (``whitening_labels``) the rows carry: what ``choose_k`` may
    agree with."""
    table = dataset.table.iloc[rows]
    return {c: table[c].to_numpy(dtype=object) for c in columns
            if c in table.columns and table[c].notna().any()}


def for_task(embeddings: Embeddings, dataset: Dataset, task: Any,
             options: dict[str, Any] | None = None, cache: Cache | None = None
             ) -> tuple[dict[str, Embeddings], dict[str, Any] | None]:
    """({"raw": ..., "w": ...}, what the whitening fitted); ``w`` is left out when the task has
    no ``w`` variant or too few train rows. A declared variant that is no transform of the
    vectors (``ft``: the fine-tuning tasks train the backbone and read only the vectors'
    fingerprint) gets them unchanged."""
    out = {"raw": embeddings}
    out.update((name, embeddings) for name in getattr(task, "variants", ())
               if name not in VECTOR_VARIANTS)
    if "w" not in getattr(task, "variants", ()):
        return out, None
    whitening = fit_for_task(embeddings, dataset, task, options, cache)
    if whitening is None:
        return out, None
    out["w"] = embeddings.with_vectors(whitening.apply(embeddings.vectors),
                                       whitening={"k": whitening.k})
    return out, whitening.record


def sweep(embeddings: Embeddings, dataset: Dataset, task: Any, ctx: Any,
          options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The task's scores with whitening of every k of the grid (a report plot, never used to
    choose k): rows with k, metric, value."""
    options = {**DEFAULTS, **(options or {})}
    rows = train_rows(task, dataset)
    if len(rows) < 2:
        return []
    out = []
    for k in k_grid(embeddings.dim):
        whitening = fit_whitening(embeddings.take(rows), k, float(options["shrinkage"]))
        whitened = embeddings.with_vectors(whitening.apply(embeddings.vectors))
        for row in task.evaluate(whitened, dataset, ctx):
            if "evidence" in row:  # scores, not chance levels
                out.append({"k": k, "k_kept": whitening.k, "metric": row["metric"],
                            "value": float(row["value"])})
    return out
