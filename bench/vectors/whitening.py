"""BERT-whitening (Su et al., 2021) as practitioners use it: y = (x - mu) W, W = U_k S_k^-1/2
from the SVD of the covariance, keeping the top k principal directions.

Full-rank whitening divides every direction by its own spread, so directions that only hold
noise count as much as those that hold signal; keeping k directions (BERT-whitening's
dimension reduction) and optional shrinkage (``S + shrinkage * mean(S)``) avoid that. The
transform is fitted on the train split of the population a task evaluates, never on test items.

``choose`` picks k and the shrinkage without test data: on the fitted train rows, the pair from
a grid whose whitened nearest neighbours agree most with the population's labels (leave-one-out
KNN consistency, mean over the label columns present). Plain whitening (shrinkage 0) at the best
k still fell 0.03-0.04 below raw style consistency for MoCo v2 and SwAV on homestead; choosing
the shrinkage too lets the train rows say how much whitening the embedding can take
(docs/metrics.md). Without labels it keeps ``DEFAULT_K_WITHOUT_LABELS`` directions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

K_GRID = (4, 8, 16, 32, 64, 128, 256, 512)
# shrinkage candidates of the automatic choice: plain whitening up to nearly a rotation
SHRINKAGE_GRID = (0.0, 0.3, 1.0, 3.0, 10.0)
DEFAULT_K_WITHOUT_LABELS = 32
SELECTION_NEIGHBOURS = 10


@dataclass
class Whitening:
    mean: np.ndarray  # [dim]
    transform: np.ndarray  # [dim, k]
    record: dict[str, Any] = field(default_factory=dict)  # what was fitted, for run.json

    @property
    def k(self) -> int:
        return int(self.transform.shape[1])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        return ((vectors - self.mean) @ self.transform).astype(np.float32)


@dataclass(frozen=True)
class PrincipalAxes:
    """The train vectors' mean and covariance eigen-decomposition: computed once, then every
    (k, shrinkage) candidate of the selection is a cheap slice of it."""

    mean: np.ndarray  # float64 [dim]
    axes: np.ndarray  # float64 [dim, dim], columns by decreasing variance
    variances: np.ndarray  # float64 [dim]
    n_fit: int


def principal_axes(vectors: np.ndarray) -> PrincipalAxes:
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) < 2:
        raise ValueError(f"whitening needs at least 2 train vectors [n, dim], got {vectors.shape}")
    mean = vectors.mean(axis=0)
    covariance = np.cov(vectors - mean, rowvar=False).reshape(vectors.shape[1], vectors.shape[1])
    u, s, _ = np.linalg.svd(covariance)
    return PrincipalAxes(mean, u, s, len(vectors))


def fit_whitening(vectors: np.ndarray, k: int | None = None, shrinkage: float = 0.0,
                  eps: float = 1e-6) -> Whitening:
    """Fit on train vectors [n, dim]; ``k`` keeps the top-k principal directions (None: all).

    Directions with (near-)zero variance are dropped rather than blown up by S^-1/2, so constant
    features (e.g. padding pixels) do not turn into noise. ``shrinkage`` adds that share of the
    mean eigenvalue to every eigenvalue before the inverse square root (0: plain whitening).
    """
    return whitening_from(principal_axes(vectors), k, shrinkage, eps)


def whitening_from(fitted: PrincipalAxes, k: int | None = None, shrinkage: float = 0.0,
                   eps: float = 1e-6) -> Whitening:
    """The whitening with ``k`` directions and ``shrinkage`` from already fitted axes."""
    if k is not None and k < 1:
        raise ValueError(f"whitening k must be at least 1, got {k}")
    if shrinkage < 0:
        raise ValueError(f"whitening shrinkage must be >= 0, got {shrinkage}")
    s = fitted.variances
    keep = s > eps * max(s[0], eps)
    if k is not None:
        keep &= np.arange(len(s)) < k
    scale = s[keep] + shrinkage * s[keep].mean() if keep.any() else s[keep]
    transform = fitted.axes[:, keep] / np.sqrt(scale)
    record = {"k": int(keep.sum()), "requested_k": k, "shrinkage": shrinkage,
              "n_fit": fitted.n_fit, "dim": int(len(s)),
              "variance_kept": float(s[keep].sum() / max(s.sum(), eps))}
    return Whitening(fitted.mean.astype(np.float32), transform.astype(np.float32), record)


def k_grid(dim: int) -> list[int]:
    """The candidate dimensions below ``dim``, then ``dim`` itself (full rank)."""
    return [k for k in K_GRID if k < dim] + [dim]


def candidate_name(k: int, shrinkage: float) -> str:
    """How a (k, shrinkage) candidate is named in run.json's ``selection_scores``."""
    return f"k={k},shrinkage={shrinkage:g}"


def choose(vectors: np.ndarray, labels: dict[str, np.ndarray],
           shrinkages: tuple[float, ...] = SHRINKAGE_GRID, grid: list[int] | None = None
           ) -> tuple[tuple[int, float], dict[str, float]]:
    """The (k, shrinkage) whose whitened train vectors' neighbours agree most with ``labels``
    (column -> [n] labels of these rows, None where missing), leave-one-out; on ties the
    smaller k, then the smaller shrinkage. Returns ((k, shrinkage), scores by
    :func:`candidate_name`). Without usable labels: ``DEFAULT_K_WITHOUT_LABELS`` directions and
    the first shrinkage, with no scores."""
    from bench.scoring.metrics import neighbour_agreement
    from bench.search.index import knn  # neighbour search lives with the index

    vectors = np.asarray(vectors, dtype=np.float64)
    grid = grid or k_grid(vectors.shape[1])
    groups = label_groups(labels)
    if not groups:
        return (min(DEFAULT_K_WITHOUT_LABELS, vectors.shape[1]), shrinkages[0]), {}
    fitted = principal_axes(vectors)
    scores: dict[tuple[int, float], float] = {}
    for k in grid:
        for shrinkage in shrinkages:
            whitened = whitening_from(fitted, k, shrinkage).apply(vectors)
            agreement = []
            for present, columns in groups:  # neighbours searched once per set of rows
                n_neighbours = min(SELECTION_NEIGHBOURS, len(present) - 1)
                neighbours = knn(whitened[present], n_neighbours)
                agreement += [float(neighbour_agreement(neighbours, values).mean())
                              for values in columns]
            scores[(k, shrinkage)] = float(np.mean(agreement))
    best = max(scores.values())
    chosen = min(c for c, v in scores.items() if v >= best - 1e-12)
    return chosen, {candidate_name(*c): v for c, v in scores.items()}


def label_groups(labels: dict[str, np.ndarray]) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """The usable label columns (more than 2 labelled rows, more than one value), grouped by
    which rows carry them: [(row positions, [labels of those rows as text, per column])]."""
    groups: dict[bytes, tuple[np.ndarray, list[np.ndarray]]] = {}
    for values in labels.values():
        values = np.asarray(values, dtype=object)
        mask = np.array([x is not None and x == x for x in values], dtype=bool)
        present = np.flatnonzero(mask)
        if len(present) <= 2 or len(set(values[present])) <= 1:
            continue
        group = groups.setdefault(mask.tobytes(), (present, []))
        group[1].append(values[present].astype(str))
    return list(groups.values())
