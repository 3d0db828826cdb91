"""BERT-whitening (Su et al., 2021) as practitioners use it: y = (x - mu) W, W = U_k S_k^-1/2
from the SVD of the covariance, keeping the top k principal directions.

Full-rank whitening divides every direction by its own spread, so directions that only hold
noise count as much as those that hold signal; keeping k directions (BERT-whitening's
dimension reduction) and optional shrinkage (``S + shrinkage * mean(S)``) avoid that. The
transform is fitted on the train split of the population a task evaluates, never on test items.

``choose_k`` picks k without test data: on the fitted train rows, the k from a grid whose
whitened nearest neighbours agree most with the population's labels (leave-one-out KNN
consistency, mean over the label columns present). Without labels it keeps
``DEFAULT_K_WITHOUT_LABELS`` directions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

K_GRID = (4, 8, 16, 32, 64, 128, 256, 512)
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


def fit_whitening(vectors: np.ndarray, k: int | None = None, shrinkage: float = 0.0,
                  eps: float = 1e-6) -> Whitening:
    """Fit on train vectors [n, dim]; ``k`` keeps the top-k principal directions (None: all).

    Directions with (near-)zero variance are dropped rather than blown up by S^-1/2, so constant
    features (e.g. padding pixels) do not turn into noise. ``shrinkage`` adds that share of the
    mean eigenvalue to every eigenvalue before the inverse square root (0: plain whitening).
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) < 2:
        raise ValueError(f"whitening needs at least 2 train vectors [n, dim], got {vectors.shape}")
    if k is not None and k < 1:
        raise ValueError(f"whitening k must be at least 1, got {k}")
    if shrinkage < 0:
        raise ValueError(f"whitening shrinkage must be >= 0, got {shrinkage}")
    mean = vectors.mean(axis=0)
    covariance = np.cov(vectors - mean, rowvar=False).reshape(vectors.shape[1], vectors.shape[1])
    u, s, _ = np.linalg.svd(covariance)
    keep = s > eps * max(s[0], eps)
    if k is not None:
        keep &= np.arange(len(s)) < k
    scale = s[keep] + shrinkage * s[keep].mean() if keep.any() else s[keep]
    transform = u[:, keep] / np.sqrt(scale)
    record = {"k": int(keep.sum()), "requested_k": k, "shrinkage": shrinkage,
              "n_fit": int(len(vectors)), "dim": int(vectors.shape[1]),
              "variance_kept": float(s[keep].sum() / max(s.sum(), eps))}
    return Whitening(mean.astype(np.float32), transform.astype(np.float32), record)


def k_grid(dim: int) -> list[int]:
    """The candidate dimensions below ``dim``, then ``dim`` itself (full rank)."""
    return [k for k in K_GRID if k < dim] + [dim]


def choose_k(vectors: np.ndarray, labels: dict[str, np.ndarray], shrinkage: float = 0.0,
             grid: list[int] | None = None) -> tuple[int, dict[int, float]]:
    """The k whose whitened train vectors' neighbours agree most with ``labels`` (column ->
    [n] labels of these rows, None where missing); the smaller k on ties. Returns (k, scores)."""
    from bench.metrics import knn_consistency  # neighbour search lives with the metrics

    vectors = np.asarray(vectors, dtype=np.float64)
    grid = grid or k_grid(vectors.shape[1])
    usable = {c: np.asarray(v, dtype=object) for c, v in labels.items()}
    usable = {c: v for c, v in usable.items()
              if (present := np.array([x is not None and x == x for x in v])).sum() > 2
              and len(set(v[present])) > 1}
    if not usable:
        return min(DEFAULT_K_WITHOUT_LABELS, vectors.shape[1]), {}
    scores: dict[int, float] = {}
    for k in grid:
        whitened = fit_whitening(vectors, k, shrinkage).apply(vectors)
        agreement = []
        for values in usable.values():
            present = np.flatnonzero([x is not None and x == x for x in values])
            n_neighbours = min(SELECTION_NEIGHBOURS, len(present) - 1)
            agreement.append(knn_consistency(whitened[present], values[present].astype(str),
                                             k=n_neighbours))
        scores[k] = float(np.mean(agreement))
    best = max(scores.values())
    return min(k for k, v in scores.items() if v >= best - 1e-12), scores
