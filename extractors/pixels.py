"""``pixels``: downsampled raw pixels, the floor every learned embedding should beat."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.core.extractor import FitContext
from bench.core.registry import SpecError, check_options, extractor
from bench.train.backbones import batched_images


class PixelsExtractor:
    modalities = ("image",)

    def __init__(self, size: int = 8):
        self.size = size
        self.name = "pixels"
        self.dim = 3 * size * size

    def config(self) -> dict[str, Any]:
        return {"size": self.size}

    def fit(self, dataset, ctx: FitContext) -> None:
        """Nothing to learn."""

    def embed(self, dataset, rows: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        start = 0
        for images in batched_images(dataset, rows, batch_size):
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
            x = F.interpolate(x, size=(self.size, self.size), mode="area")
            out[start:start + len(images)] = x.flatten(1).numpy()
            start += len(images)
        return out


@extractor("pixels")
def make_pixels(options: dict[str, str], profile) -> PixelsExtractor:
    check_options("pixels", options, ("size",))
    try:
        size = int(options.get("size", 8))
    except ValueError:
        raise SpecError(f"pixels: option size={options['size']!r} is not an integer") from None
    if size < 1:
        raise SpecError(f"pixels: option size={size} must be at least 1")
    return PixelsExtractor(size=size)
