"""Sanity of the whole knn path on homestead: an oracle built from the true labels scores near
1.0, pixels sit in between, and a random backbone sits nearest the chance level."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.core.config import get_profile
from bench.run import RunSpec, run_benchmark


def oracle_vectors(dataset, label: str) -> np.ndarray:
    """One-hot of a cover's true (noise-free) label, zeros for other items, a little noise."""
    latents = dataset.logs["item_latents"].set_index("item_id")
    vectors = np.zeros((len(dataset), 8), dtype=np.float32)
    covers = dataset.rows(role="content")
    codes = pd.Categorical(latents.loc[dataset.ids[covers], f"true_{label}"]).codes
    vectors[covers, codes] = 1.0
    return vectors + np.random.default_rng(0).normal(0, 0.01, vectors.shape).astype(np.float32)


def test_oracle_beats_pixels_beats_random_near_chance(plugins, tmp_path, cache):
    profile = get_profile("quick")
    options = profile.dataset_options("homestead")
    dataset = plugins.build_dataset("homestead", cache, **options)
    for label in ("style", "scene"):
        np.savez(tmp_path / f"oracle_{label}.npz", ids=dataset.ids,
                 vectors=oracle_vectors(dataset, label))
    spec = RunSpec(profile=profile, dataset="homestead", dataset_options=options,
                   extractors=(f"precomputed:{tmp_path / 'oracle_style.npz'}",
                               f"precomputed:{tmp_path / 'oracle_scene.npz'}", "pixels", "random"),
                   tasks=("knn",), out_root=tmp_path, run_id="oracle", report=False)
    run = run_benchmark(spec, cache)
    results = pd.DataFrame(run.rows).query("variant == 'raw'")
    value = results.set_index(["extractor", "metric"])["value"]
    for label in ("style", "scene"):
        oracle = value[(f"precomputed:oracle_{label}", f"{label}_consistency")]
        pixels = value[("pixels", f"{label}_consistency")]
        random = value[("random", f"{label}_consistency")]
        chance = value[("pixels", f"{label}_chance")]
        assert oracle > 0.85, (label, oracle)  # below 1.0 only by the dataset's label noise
        assert oracle > pixels > random > chance, (label, oracle, pixels, random, chance)
