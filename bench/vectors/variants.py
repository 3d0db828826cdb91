"""The variants a task sees: ``raw`` vectors and ``w``, BERT-whitened on the task's population.

Whitening is fitted per task on the train-split rows of the population the task evaluates (the
content covers for knn, the product shots for classify, ...: ``task.population(dataset)``), so a
task's test items never inform it and the transform suits the items it compares. Its dimension
``k`` and shrinkage are options (``auto`` by default: chosen together on those train rows by the
agreement of their neighbours on the task's own labels, ``task.whitening_labels``, see
:func:`bench.vectors.whitening.choose`); what was fitted is returned for run.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.core.cache import Cache, array_digest, cached
from bench.core.code import files_digest, source_files
from bench.core.data import LABEL_COLUMNS, Dataset
from bench.embed.embeddings import Embeddings
from bench.scoring import metrics
from bench.search import index
from bench.vectors.whitening import (
    SELECTION_NEIGHBOURS,
    SHRINKAGE_GRID,
    Whitening,
    choose,
    fit_whitening,
    k_grid,
    principal_axes,
    whitening_from,
)

DEFAULTS = {"k": "auto", "shrinkage": "auto"}
VECTOR_VARIANTS = ("raw", "w")  # what this module makes; other variants are the task's own


def population(task: Any, dataset: Dataset) -> np.ndarray:
    """The task's population (``Task.population``: every row unless the task says)."""
    return np.asarray(task.population(dataset))


def train_rows(task: Any, dataset: Dataset) -> np.ndarray:
    rows = population(task, dataset)
    return rows[dataset.table["split"].iloc[rows].to_numpy() == "train"]


def check_options(options: dict[str, Any]) -> None:
    """A ValueError naming the flag when k is not auto, full or a number >= 1, or the
    shrinkage not auto or a number >= 0."""
    for key, flag, words, cast, low in (("k", "--whiten-k", ("auto", "full", "none"), int, 1),
                                        ("shrinkage", "--whiten-shrinkage", ("auto",), float, 0)):
        text = str(options.get(key, DEFAULTS[key]))
        if text in words:
            continue
        try:
            ok = cast(text) >= low
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{flag} {text}: choose {', '.join(words[:2])} or a number "
                             f">= {low}")


def candidates(options: dict[str, Any], dim: int) -> tuple[list[int], tuple[float, ...]]:
    """The k and shrinkage values the options leave open (as :func:`check_options` allows
    them): ``auto`` is the grid, ``full`` (or ``none``) every direction, a number itself."""
    k = str(options["k"])
    ks = k_grid(dim) if k == "auto" else [dim if k in ("full", "none") else int(k)]
    shrink = str(options["shrinkage"])
    shrinkages = SHRINKAGE_GRID if shrink == "auto" else (float(shrink),)
    return ks, shrinkages


def scheduled(task: Any, options: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The task's declared variants, narrowed by its ``variants`` option (a list, or text such
    as ``raw`` or ``raw,w``): a profile may run a costly task on raw vectors only."""
    declared = tuple(task.variants)
    wanted = (options or {}).get("variants")
    if wanted is None:
        return declared
    wanted = [v.strip() for v in wanted.split(",")] if isinstance(wanted, str) else list(wanted)
    unknown = [v for v in wanted if v not in declared]
    if unknown or not wanted:
        raise ValueError(f"task {task.name} option variants={','.join(wanted)}:"
                         f" choose among its variants {', '.join(declared)}")
    return tuple(v for v in declared if v in wanted)


def available(task: Any, dataset: Dataset, options: dict[str, Any] | None = None
              ) -> tuple[str, ...]:
    """The task's scheduled variants this dataset allows: ``w`` needs at least two train rows
    in the task's population (what ``for_task`` fits on); a reference row that reads no
    vectors (ctr's ID-only ranker) is reported for these."""
    return tuple(v for v in scheduled(task, options)
                 if v != "w" or len(train_rows(task, dataset)) >= 2)


def fit_for_task(embeddings: Embeddings, dataset: Dataset, task: Any,
                 options: dict[str, Any] | None = None,
                 cache: Cache | None = None) -> Whitening | None:
    """The task's whitening, or None when its population has fewer than 2 train rows."""
    options = {**DEFAULTS, **(options or {})}
    rows = train_rows(task, dataset)
    if len(rows) < 2:
        return None
    vectors = embeddings.take(rows)
    ks, shrinkages = candidates(options, vectors.shape[1])
    scores: dict[str, float] = {}
    if len(ks) * len(shrinkages) > 1:
        columns = task.whitening_labels
        (k, shrinkage), scores = cached_choice(cache, vectors, train_labels(dataset, rows,
                                                                            columns),
                                               ks, shrinkages)
    else:
        k, shrinkage = ks[0], shrinkages[0]
    whitening = fit_whitening(vectors, k, shrinkage)
    whitening.record.update({"k_option": str(options["k"]),
                             "shrinkage_option": str(options["shrinkage"]),
                             "fit_rows": "train split of "
                             f"the {task.name} population",
                             "selection_scores": scores})
    return whitening


def cached_choice(cache: Cache | None, vectors: np.ndarray, labels: dict[str, np.ndarray],
                  ks: list[int], shrinkages: tuple[float, ...]
                  ) -> tuple[tuple[int, float], dict[str, float]]:
    """``choose``, cached under a hash of the vectors, labels and candidates: a re-run with
    warm caches does not redo the leave-one-out searches."""
    if cache is None:
        return choose(vectors, labels, shrinkages, ks)
    key = array_digest(list(shrinkages), SELECTION_NEIGHBOURS, ks,
                       np.asarray(vectors, dtype=np.float64),
                       *[np.asarray(labels[c], dtype=str) for c in sorted(labels)], sorted(labels))

    def compute() -> dict[str, Any]:
        (k, shrinkage), scores = choose(vectors, labels, shrinkages, ks)
        return {"k": k, "shrinkage": shrinkage, "scores": scores}

    found = cached(cache, "whitening_choice", key, compute,
                   valid=lambda v: isinstance(v, dict) and {"k", "shrinkage", "scores"} <= set(v))
    return (int(found["k"]), float(found["shrinkage"])), dict(found["scores"])


def train_labels(dataset: Dataset, rows: np.ndarray,
                 columns: tuple[str, ...] = LABEL_COLUMNS) -> dict[str, np.ndarray]:
    """The task's label columns (``whitening_labels``) the rows carry: what ``choose`` may
    agree with."""
    table = dataset.table.iloc[rows]
    return {c: table[c].to_numpy(dtype=object) for c in columns
            if c in table.columns and table[c].notna().any()}


def for_task(embeddings: Embeddings, dataset: Dataset, task: Any,
             options: dict[str, Any] | None = None, cache: Cache | None = None,
             wanted: tuple[str, ...] | None = None
             ) -> tuple[dict[str, Embeddings], dict[str, Any] | None]:
    """({"raw": ..., "w": ...}, what the whitening fitted); ``w`` is left out when the task has
    no ``w`` variant, it is not ``wanted`` (default: the task's variants) or there are too few
    train rows. A declared variant that is no transform of the vectors (``ft``: the fine-tuning
    tasks train the backbone and read only the vectors' fingerprint) gets them unchanged."""
    wanted = tuple(task.variants) if wanted is None else wanted
    out = {"raw": embeddings}
    out.update((name, embeddings) for name in wanted if name not in VECTOR_VARIANTS)
    if "w" not in wanted:
        return out, None
    whitening = fit_for_task(embeddings, dataset, task, options, cache)
    if whitening is None:
        return out, None
    out["w"] = embeddings.with_vectors(whitening.apply(embeddings.vectors),
                                       whitening={"k": whitening.k})
    return out, whitening.record


def sweep(embeddings: Embeddings, dataset: Dataset, task: Any, ctx: Any,
          shrinkage: float) -> list[dict[str, Any]]:
    """The task's scores with whitening of every k of the grid at ``shrinkage`` (the one the
    ``w`` variant was fitted with: a report plot, never used to choose): rows with k,
    shrinkage, metric, value. Cached by the vectors, the dataset and the settings, so a warm
    re-run does not redo it."""
    rows = train_rows(task, dataset)
    if len(rows) < 2:
        return []
    code = files_digest([*source_files(type(task)), *(Path(m.__file__) for m in (metrics, index))])
    key = array_digest(embeddings.vectors, dataset.fingerprint, task.name,
                       ctx.options, shrinkage, k_grid(embeddings.dim), code)

    def compute() -> list[dict[str, Any]]:
        out = []
        fitted = principal_axes(embeddings.take(rows))  # once: each k is a slice of it
        for k in k_grid(embeddings.dim):
            whitening = whitening_from(fitted, k, shrinkage)
            whitened = embeddings.with_vectors(whitening.apply(embeddings.vectors))
            for row in task.evaluate(whitened, dataset, ctx):
                if "evidence" in row:  # scores, not chance levels
                    out.append({"k": k, "k_kept": whitening.k, "shrinkage": shrinkage,
                                "metric": row["metric"], "value": float(row["value"])})
        return out

    return cached(ctx.cache, "whitening_sweep", key, compute,
                  valid=lambda v: isinstance(v, list))
