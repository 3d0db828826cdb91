"""BERT-whitening (Su et al., 2021): y = (x - mu) W with W = U S^-1/2 from the SVD of the
covariance, fitted on the train split only so test items never inform the transform."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Whitening:
    mean: np.ndarray  # [dim]
    transform: np.ndarray  # [dim, k]

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        return ((vectors - self.mean) @ self.transform).astype(np.float32)


def fit_whitening(vectors: np.ndarray, k: int | None = None, eps: float = 1e-6) -> Whitening:
    """Fit on train vectors [n, dim]; ``k`` keeps the top-k principal directions.

    Directions with (near-)zero variance are dropped rather than blown up by S^-1/2, so constant
    features (e.g. padding pixels) do not turn into noise.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) < 2:
        raise ValueError(f"whitening needs at least 2 train vectors [n, dim], got {vectors.shape}")
    mean = vectors.mean(axis=0)
    covariance = np.cov(vectors - mean, rowvar=False).reshape(vectors.shape[1], vectors.shape[1])
    u, s, _ = np.linalg.svd(covariance)
    keep = s > eps * max(s[0], eps)
    if k is not None:
        keep &= np.arange(len(s)) < k
    transform = u[:, keep] / np.sqrt(s[keep])
    return Whitening(mean.astype(np.float32), transform.astype(np.float32))
