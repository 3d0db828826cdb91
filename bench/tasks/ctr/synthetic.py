"""A small synthetic impressions log with a known visual preference, for tests and ``perf ctr``.

Items have latent "visual" vectors; each user prefers a direction of that space and clicks
with probability sigmoid(bias + taste . visual + item popularity). Detail views follow clicks,
conversions follow detail views. Items published on the last day are cold. The embeddings are
the visual vectors plus noise, so image features help exactly as much as the noise allows;
the 4x4 images are tints of the first three latent axes, so pixel extractors see part of it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.core.data import Dataset, array_image_source
from bench.embed.embeddings import Embeddings


def make_log(n_users: int = 200, n_items: int = 300, n_days: int = 4, per_day: int = 15,
             latent: int = 8, taste: float = 2.0, noise: float = 0.3, n_categories: int = 6,
             seed: int = 0) -> tuple[Dataset, Embeddings]:
    """A Dataset with ``logs['impressions']`` and matching embeddings (dim 16 = latent + 8)."""
    rng = np.random.default_rng(seed)
    visual = rng.standard_normal((n_items, latent)) / np.sqrt(latent)
    users = rng.standard_normal((n_users, latent))
    popularity = 0.5 * rng.standard_normal(n_items)
    publish = np.where(rng.random(n_items) < 0.15, n_days - 1, 0)
    user = np.repeat(np.arange(n_users), n_days * per_day)
    day = np.tile(np.repeat(np.arange(n_days), per_day), n_users)
    item = np.empty_like(user)
    for d in range(n_days):  # impressions of day d only show items published by then
        at = day == d
        item[at] = rng.choice(np.flatnonzero(publish <= d), size=int(at.sum()))
    logit = -1.2 + taste * np.einsum("nk,nk->n", users[user], visual[item]) + popularity[item]
    click = rng.random(len(user)) < 1 / (1 + np.exp(-logit))
    detail = click & (rng.random(len(user)) < 0.6)
    conversion = detail & (rng.random(len(user)) < 1 / (1 + np.exp(-(logit - 0.5))))
    ids = np.array([f"c{i:05d}" for i in range(n_items)])
    log = pd.DataFrame({"user_id": [f"u{u:04d}" for u in user], "item_id": ids[item],
                        "day": day, "click": click.astype(int), "detail": detail.astype(int),
                        "conversion": conversion.astype(int)})
    table = pd.DataFrame({"id": ids, "split": "test", "role": "content",
                          "category": [f"cat{c}" for c in rng.integers(0, n_categories, n_items)],
                          "publish_day": publish})
    tint = 128 + 60 * visual[:, :3] * np.sqrt(latent)  # the first latent axes tint the image
    images = np.clip(tint[:, None, None, :] + rng.normal(0, 20, (n_items, 4, 4, 3)), 0, 255)
    images = images.astype(np.uint8)
    dataset = Dataset(f"synthetic-ctr-{seed}", table, array_image_source(images), 4,
                      fingerprint=f"synthetic-ctr-{n_users}-{n_items}-{n_days}-{per_day}-{seed}",
                      logs={"impressions": log})
    vectors = np.concatenate([visual + noise * rng.standard_normal(visual.shape) / np.sqrt(latent),
                              rng.standard_normal((n_items, 8)) * 0.1], axis=1)
    embeddings = Embeddings(ids, vectors.astype(np.float32), {"extractor": "synthetic"})
    return dataset, embeddings
