"""Raw image features for the AMS path, and the hash that places each image on a server.

The DICM paper's raw image feature is VGG16's FC6 output: 4096 non-negative floats per image.
Any extractor's vectors can stand in for it. When their dimension is not the requested ``D``
they are lifted by one fixed random layer with a ReLU, ``relu(x W)`` with ``W ~ N(0, 1/d)``
drawn from a seed: a wide, redundant, non-negative vector like FC6, at any ``D``, that keeps the
extractor's information (a random ReLU layer of width D >> d is injective in practice). With
``D`` equal to the extractor's dimension the vectors are used as they are.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np


def lift(vectors: np.ndarray, dim: int | None, seed: int = 0) -> np.ndarray:
    """float32 [n, dim] raw features from extractor vectors [n, d] (see the module docstring)."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be [n, d], got shape {x.shape}")
    if dim is None or dim == x.shape[1]:
        return np.ascontiguousarray(x)
    if dim < 1:
        raise ValueError(f"raw feature dimension must be positive, got {dim}")
    x = x - x.mean(0, keepdims=True)
    x = x / max(float(np.sqrt((x**2).mean())), 1e-12)
    weights = np.random.default_rng(seed).standard_normal((x.shape[1], dim), dtype=np.float32)
    return np.maximum(x @ (weights / np.sqrt(x.shape[1])), 0.0).astype(np.float32)


def shard_of(keys: Sequence[str] | np.ndarray, servers: int) -> np.ndarray:
    """Server index of each image id: CRC-32 of the id modulo the number of servers.

    A stable hash (Python's ``hash`` of a str changes between processes), so every process,
    and every machine under torchrun, agrees on where an image lives.
    """
    if servers < 1:
        raise ValueError(f"need at least one server, got {servers}")
    return np.array([zlib.crc32(str(key).encode()) % servers for key in keys], dtype=np.int64)
