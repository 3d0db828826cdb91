"""``random``: a randomly initialised backbone, the other floor (architecture prior, no learning).

It exposes no ``backbone()``: fine-tuning random weights is exactly the ``scratch`` baseline that
the fine-tuning tasks already train once per architecture and seed, so it would only repeat it."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.core.extractor import FitContext
from bench.core.registry import SpecError, check_options, extractor
from bench.train.backbones import batched_images, build_backbone, embed_images, pick_device


class RandomBackboneExtractor:
    modalities = ("image",)

    def __init__(self, arch: str = "resnet18", width: int = 32, image_size: int = 32,
                 seed: int = 0, batch_size: int = 256, stem: str = "strided"):
        self.name = "random"
        self.arch, self.width, self.image_size, self.seed = arch, width, image_size, seed
        self.stem = stem
        self.batch_size = batch_size
        self.model = build_backbone(arch, width, seed=seed, stem=stem)
        self.dim = self.model.feature_dim
        self.device = pick_device()
        self.model.to(self.device)

    def config(self) -> dict[str, Any]:
        return {"arch": self.arch, "width": self.width, "image_size": self.image_size,
                "seed": self.seed, "stem": self.stem}

    def fit(self, dataset, ctx: FitContext) -> None:
        """Random weights are the point: nothing to learn."""

    def embed(self, dataset, rows: np.ndarray) -> np.ndarray:
        batches = batched_images(dataset, rows, self.batch_size)
        return embed_images(self.model, batches, self.image_size, self.device)


def default_stem(image_size: int) -> str:
    """The stem the learned extractors use at this size (strided at 32 px, small up to 64)."""
    return "strided" if image_size <= 32 else "small" if image_size <= 64 else "imagenet"


@extractor("random")
def make_random(options: dict[str, str], profile) -> RandomBackboneExtractor:
    check_options("random", options, ("arch", "width", "image_size", "seed", "stem"))
    budget = profile.budget("random")

    def number(key: str, default: int) -> int:
        try:
            return int(options.get(key, default))
        except ValueError:
            raise SpecError(f"random: option {key}={options[key]!r} is not an integer") from None

    image_size = number("image_size", budget.get("image_size", 32))
    return RandomBackboneExtractor(
        arch=options.get("arch", budget.get("arch", "resnet18")),
        width=number("width", budget.get("width", 32)),
        image_size=image_size,
        seed=number("seed", 0),
        batch_size=profile.embed_batch_size,
        # the learned extractors' backbone at 32-64 px (see docs/learned-extractors.md), so
        # `random` is the untrained floor of the same architecture and shares its scratch row
        stem=options.get("stem", budget.get("stem", default_stem(budget.get("image_size", 32)))),
    )
