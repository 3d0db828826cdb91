"""What each part of a trained ``m6_moe`` gives the linear probe of ``classify`` (issue #26).

The default profile's world and ``classify`` split (seed 0), the task's own probe
(``bench.tasks.classify.linear_probe``), 95% percentile bootstrap over the test items. Rows:
the ``random`` backbone's pooled features, the same times a random 32- and 64-column matrix
(how much a narrower vector costs by itself), ``m6_moe``'s embedding, its image tower's pooled
features, its ``[CLS]`` state before the head and its averaged image-token states (the image
alone: product shots have no titles). Trains ``m6_moe`` unless the cache holds it.

    flock /tmp/cpu-heavy.lock .venv/bin/python benchmarks/m6_probe_parts.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's bench

from bench.core import registry  # noqa: E402
from bench.core.cache import Cache  # noqa: E402
from bench.core.config import get_profile  # noqa: E402
from bench.core.extractor import FitContext  # noqa: E402
from bench.tasks.classify import Split, linear_probe, make_split  # noqa: E402
from bench.train.backbones import batched_images, embed_images, images_to_tensor  # noqa: E402


def probe(x: np.ndarray, split: Split, name: str) -> None:
    """Fit on the split's train rows (first in ``x``), print test top-1 with its interval."""
    n = len(split.train)
    scores, _ = linear_probe(x[:n], split.train_y, x[n:], len(split.classes), split.fit,
                             split.val)
    hits = (scores.argmax(1) == split.test_y).astype(float)
    draws = np.random.default_rng(0).integers(0, len(hits), (2000, len(hits)))
    low, high = np.percentile(hits[draws].mean(1), [2.5, 97.5])
    print(f"{name:58s} {x.shape[1]:4d}-d  {hits.mean():.3f} [{low:.3f}, {high:.3f}]",
          flush=True)


@torch.no_grad()
def m6_states(extractor, dataset, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``[CLS]`` state and the mean image-token state after the blocks, image alone."""
    model, cls, tokens = extractor.model, [], []
    for start in range(0, len(rows), 256):
        x = images_to_tensor(dataset.images(rows[start:start + 256]), extractor.image_size,
                             extractor.device)
        states, _ = model.encode(model.image_tokens(x), None)
        cls.append(states[:, 0].float().cpu().numpy())
        tokens.append(states[:, 1:].mean(1).float().cpu().numpy())
    return np.concatenate(cls), np.concatenate(tokens)


def main() -> None:
    profile, cache = get_profile("default"), Cache()
    registry.load_plugins()
    dataset = registry.build_dataset("homestead", cache, **profile.dataset_options("homestead"))
    split = make_split(dataset, 0, 0.2)
    rows = np.concatenate([split.train, split.test])
    ctx = FitContext(cache=cache, progress=False)
    random = registry.build_extractor("random", profile)
    random.fit(dataset, ctx)
    pooled = random.embed(dataset, rows)
    probe(pooled, split, "random backbone, pooled")
    for dim in (32, 64):
        matrix = np.random.default_rng(0).standard_normal((pooled.shape[1], dim))
        probe(pooled @ matrix.astype(np.float32), split, f"random backbone, random {dim} columns")
    m6 = registry.build_extractor("m6_moe", profile)
    m6.fit(dataset, ctx)
    probe(m6.embed(dataset, rows), split, "m6_moe embedding")
    tower = m6.backbone().eval()
    probe(embed_images(tower, batched_images(dataset, rows, 256), m6.image_size, m6.device),
          split, "m6_moe image tower, pooled")
    cls, tokens = m6_states(m6, dataset, rows)
    probe(cls, split, "m6_moe [CLS] state before the head")
    probe(tokens, split, "m6_moe image-token states, averaged")


if __name__ == "__main__":
    main()
