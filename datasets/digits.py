"""``digits``: scikit-learn's 1,797 real 8x8 handwritten digits, upsampled to RGB.

Small real data that ships with scikit-learn: labels are the digit (``category``), splits are a
fixed stratified 20/50/30 pretrain/train/test draw.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from bench.core.cache import Cache, fingerprint
from bench.core.data import Dataset, array_image_source
from bench.core.registry import dataset


def _render(images8: np.ndarray, size: int) -> np.ndarray:
    x = torch.from_numpy(images8.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    gray = (x.squeeze(1).clamp(0, 1).numpy() * 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def _splits(labels: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    split = np.empty(len(labels), dtype=object)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        cut1, cut2 = int(0.2 * len(rows)), int(0.7 * len(rows))
        split[rows[:cut1]], split[rows[cut1:cut2]], split[rows[cut2:]] = "pretrain", "train", "test"
    return split


@dataset("digits")
def load_digits_dataset(cache: Cache, image_size: int = 32, seed: int = 0, **_: object) -> Dataset:
    digits = load_digits()
    labels = digits.target.astype(int)
    table = pd.DataFrame({
        "id": [f"d{i:04d}" for i in range(len(labels))],
        "split": _splits(labels, seed),
        "category": [str(v) for v in labels],
        "coarse_category": ["even" if v % 2 == 0 else "odd" for v in labels],
    })
    images = _render(digits.images, image_size)
    return Dataset("digits", table, array_image_source(images), image_size,
                   fingerprint("digits", image_size, seed, 1))
