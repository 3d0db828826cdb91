"""``ladder``: known-answer reference embeddings, built from the dataset's ground truth.

A benchmark is worth only the differences it can resolve. The ladder measures that with
embeddings whose information is known: the latent factors that generated each item
(``dataset.latents``; on homestead the true style, scene, leaf category, identity and the
cover's light warmth), hidden in a random rotation of ``dim`` (256) dimensions:

- ``ladder:clean``: the latents alone (the ceiling);
- ``ladder:noise=S``: the latents plus Gaussian noise of standard deviation S on every one of
  the ``dim`` coordinates (each latent block has unit norm, so S = 0.2 puts about 10 units of
  noise variance against 2-3 of signal, as in an extractor whose top directions are not all
  informative);
- ``ladder:random``: noise only (the floor; it knows nothing).

Every task should order the rungs clean > noise levels (ascending) > random; ``bench
validate`` and the report's validity table say whether it does and by how many standard errors
the floor and ceiling are apart. Encoding: a categorical latent with C values gets a random
unit code per value in min(C, 16) dimensions (C <= 16: exactly orthogonal one-hot codes);
a numeric latent is standardised; each block is scaled to unit root-mean-square norm over the
items it applies to, and is zero where it does not apply. Columns named ``nuisance_*`` (the
camera, light, backdrop... an image was drawn with) are left out: they are what a good
embedding should ignore, not what the tasks ask for, so they are no part of the ceiling. The codes, the noise and the rotation
come from ``seed``, so a rung is the same vectors on every run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from bench.core.data import Dataset, DatasetError
from bench.core.extractor import FitContext
from bench.core.registry import SpecError, check_options, extractor

CODE_DIM = 16
NUISANCE_PREFIX = "nuisance_"  # latents that vary what an image looks like, not what it shows
OPTIONS = ("noise", "dim", "seed")


class LadderExtractor:
    modalities = ("latents",)
    kind = "reference"  # a known answer, never deployable: the report never names it best

    def __init__(self, noise: float | None, dim: int = 256, seed: int = 0):
        if noise is not None and noise < 0:
            raise ValueError(f"ladder: noise must be >= 0, got {noise}")
        self.noise, self.dim, self.seed = noise, int(dim), int(seed)
        self.name = ("ladder:random" if noise is None else "ladder:clean" if noise == 0
                     else f"ladder:noise={noise:g}")

    def config(self) -> dict[str, Any]:
        return {"noise": self.noise, "dim": self.dim, "seed": self.seed, "code_dim": CODE_DIM}

    def fit(self, dataset: Dataset, ctx: FitContext) -> None:
        """Nothing to learn: the rung is a function of the ground truth."""

    def embed(self, dataset: Dataset, rows: np.ndarray) -> np.ndarray:
        if dataset.latents is None:
            raise DatasetError(f"dataset {dataset.name!r} has no ground-truth latents, so the "
                               "known-answer ladder cannot be built for it")
        rng = np.random.default_rng(self.seed)
        signal = latent_vectors(dataset.latents, rng)
        if signal.shape[1] > self.dim:
            raise ValueError(f"ladder: the latents need {signal.shape[1]} dimensions, more than "
                             f"dim={self.dim}")
        rotation, _ = np.linalg.qr(rng.normal(size=(self.dim, self.dim)))
        noise = rng.normal(size=(len(dataset), self.dim))  # drawn for every row: rows agree
        padded = np.zeros((len(dataset), self.dim))
        if self.noise is None:
            padded = noise
        else:
            padded[:, :signal.shape[1]] = signal
            padded += self.noise * noise
        return (padded @ rotation)[np.asarray(rows, dtype=np.int64)].astype(np.float32)


def latent_vectors(latents: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """Concatenated unit-RMS blocks, one per latent column (``id`` and ``nuisance_*``
    excluded), in column order."""
    blocks = []
    for column in latents.columns:
        if column == "id" or str(column).startswith(NUISANCE_PREFIX):
            continue
        values = latents[column]
        present = values.notna().to_numpy()
        if not present.any():
            continue
        if pd.api.types.is_numeric_dtype(values):
            x = values.to_numpy(dtype=np.float64)
            block = np.zeros((len(values), 1))
            block[present, 0] = (x[present] - x[present].mean()) / (x[present].std() or 1.0)
        else:
            vocab, codes = np.unique(values[present].astype(str), return_inverse=True)
            width = min(len(vocab), CODE_DIM)
            table = (np.eye(len(vocab)) if len(vocab) <= CODE_DIM
                     else rng.normal(size=(len(vocab), width)))
            table /= np.linalg.norm(table, axis=1, keepdims=True)
            block = np.zeros((len(values), width))
            block[present] = table[codes.reshape(-1)]
        rms = np.sqrt((block[present] ** 2).sum(1).mean())
        blocks.append(block / (rms if rms > 0 else 1.0))
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(latents), 0))


@extractor("ladder")
def make_ladder(options: dict[str, str], profile: Any) -> LadderExtractor:
    options = dict(options)
    rung = options.pop("arg", None)
    check_options("ladder", options, OPTIONS)
    if rung not in (None, "clean", "random"):
        raise SpecError(f"ladder: unknown rung {rung!r}; use ladder:clean, ladder:random or "
                        "ladder:noise=S[,dim=D,seed=N]")
    if rung == "random":
        noise = None
    elif rung == "clean" or "noise" not in options:
        noise = 0.0
    else:
        noise = float(options["noise"])
    return LadderExtractor(noise, int(options.get("dim", 256)), int(options.get("seed", 0)))
