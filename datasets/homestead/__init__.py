"""``homestead``: a procedurally rendered home-furnishing world, generated from a seed.

Why synthetic: every task of the suite (KNN consistency, classification, image search, CTR) must
run with no download, on data whose ground truth is known. The world holds

- product shots: one piece of furniture on a plain light background (or, with the
  ``backgrounds`` nuisance, a coloured wall and floor). 6 coarse categories, 36 leaf
  categories (shape: proportions, legs, back height, roundness), 6 styles (palette, material
  texture, leg type, trim), and an identity per product;
- content covers: room scenes (6 scene types told apart by walls, floor, windows and fixtures)
  holding 2-4 products, mostly in one dominant style that also tints the walls and decor, with a
  noisy title;
- image-search queries: crops of fresh scenes around one product, with scale, shift and light
  changes, whose ``identity`` is that product's id in the product-shot gallery;
- nuisance factors of real catalogues on every image (``nuisance``: colourways shared across
  styles, backgrounds across styles, camera, light, props, sensor noise, JPEG, mirrored
  pictures, a room photo's camera height) and the style
  cue that takes colour's place (``materials``: each style's signature material on walls, rugs
  and upholstery), each a dataset option recorded in the latents table as ``nuisance_*``; off
  by default (``nuisance=0``: homestead-1.1's pictures), ``nuisance=1`` turns them on
  (docs/homestead.md says why the default stays off);
- a behaviour log: users with latent tastes over style, scene, category and the cover's light
  warmth (a purely visual trait no label carries), impressions over days with click, detail-view
  and conversion outcomes, and covers first published on the last day (cold start).

The item table has one row per image: id, role (product | content | query), split (pretrain |
train | test), title, style, scene, category (leaf), coarse_category, identity, publish_day.
``logs`` holds ``impressions`` (user_id, item_id, day, click, detail, conversion), ``users``
(their latent favourites and tastes) and ``item_latents`` (true style and scene, light warmth,
coarse mix, popularity, publish day: ground truth for oracles and checks, not features for a
model). Together they hold the user model the log was drawn from (``behaviour.UserModel``), which
the dataset gives back as its ``simulator`` (the online task, docs/online.md).

Label noise (a few % of style and scene labels flipped) and the nuisance factors keep tasks
from saturating and colour from giving style away. Everything is cached under
``cache.path("datasets", f"homestead-{fingerprint}")``.

The package, in the order the data flows:

- ``vocabulary``: styles, scene types, categories and what each looks like;
- ``shapes``: the primitive row every shape is drawn from;
- ``furniture``: a look per product, a drawer per coarse category;
- ``scene``: rooms, fixtures, decor, and furniture placed in them;
- ``nuisance``: the nuisance factors, their options and their own random streams;
- ``materials``: each style's signature material, drawn at a scale 32 px resolves;
- ``render``: the batched signed-distance renderer;
- ``titles``: the covers' noisy titles;
- ``behaviour``: users, impressions and their outcomes;
- ``world``: catalogue, covers, queries, splits, label noise, the item table (``generate``);
- ``cache``: the cache entry;
- this module: the options, the fingerprint and the registered factory.
"""

from __future__ import annotations

import time
from typing import Any

from bench.core.cache import Cache, fingerprint
from bench.core.data import Dataset, DatasetError, array_image_source
from bench.core.registry import dataset

from .behaviour import BEHAVIOUR_VERSION, UserModel
from .cache import TABLES, read_entry, write_entry
from .nuisance import DEFAULTS as NUISANCE_DEFAULTS
from .nuisance import FACTORS
from .nuisance import LIMITS as NUISANCE_LIMITS
from .nuisance import resolve as resolve_nuisance
from .vocabulary import COARSE, LEAF_NAMES, LEAVES, SCENES, STYLES
from .world import (
    LABEL_NOISE,
    QUERY_CLUTTER_MAX,
    QUERY_LIGHT,
    QUERY_SHIFT,
    QUERY_TINT,
    QUERY_VIEW,
    generate,
)

__all__ = ["COARSE", "DEFAULTS", "FACTORS", "GENERATOR_VERSION", "LABEL_NOISE", "LEAF_NAMES", "LEAVES",
           "QUERY_CLUTTER_MAX", "QUERY_LIGHT", "QUERY_SHIFT", "QUERY_TINT", "QUERY_VIEW",
           "SCENES", "STYLES", "load_homestead"]

# 1.1: tighter, cleaner query crops (QUERY_*); repeats test-only. 2.0: the nuisance factors
# (``nuisance``: colourways, backgrounds, camera, light, clutter, noise, jpeg); nuisance=0 draws
# homestead-1.1's images, item table and logs exactly. 2.1: the style materials
# (``materials``, materials.py), on with nuisance=1; nuisance=0 is still homestead-1.1. 2.2: the
# ``mirror`` (a share of pictures mirrored left to right) and ``height`` (a room photo's camera
# height) factors, on with nuisance=1.
GENERATOR_VERSION = "homestead-2.2"
DEFAULTS: dict[str, int] = dict(image_size=32, n_products=1500, n_covers=2400, n_queries=2000,
                                n_users=600, n_days=6, impressions_per_user_day=20, seed=0,
                                nuisance=0, **NUISANCE_DEFAULTS)


def _params(options: dict[str, Any]) -> dict[str, int]:
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise DatasetError(f"homestead: unknown options {unknown}; known: {sorted(DEFAULTS)}")
    params = dict(DEFAULTS)
    for key, value in options.items():
        try:
            params[key] = int(value)
        except (TypeError, ValueError):
            raise DatasetError(f"homestead: option {key}={value!r} is not an integer") from None
    limits = dict(image_size=(16, 512), n_products=(len(LEAF_NAMES), 10**7), n_covers=(6, 10**7),
                  n_queries=(0, 10**7), n_users=(1, 10**7), n_days=(2, 10**4),
                  impressions_per_user_day=(1, 10**4), seed=(0, 2**32 - 1), nuisance=(0, 1),
                  **NUISANCE_LIMITS)
    for key, (lo, hi) in limits.items():
        if not lo <= params[key] <= hi:
            raise DatasetError(f"homestead: {key}={params[key]} is outside [{lo}, {hi}]")
    return resolve_nuisance(params, set(options))


@dataset("homestead")
def load_homestead(cache: Cache | None = None, **options: Any) -> Dataset:
    """Build (or load from the cache) the homestead world for the given size options."""
    params = _params(options)
    fp = fingerprint("homestead", GENERATOR_VERSION, params, *_behaviour_key())
    folder = (cache or Cache()).path("datasets", f"homestead-{fp}")
    loaded = read_entry(folder)
    if loaded is None:  # generate, then always return what was read back: both paths agree
        start = time.perf_counter()
        images, table, logs = generate(params)
        seconds = round(time.perf_counter() - start, 3)
        write_entry(folder, images, {"items": table, **logs},
                    {"generator_version": GENERATOR_VERSION, "params": params,
                     "seconds": seconds})
        loaded = read_entry(folder)
        if loaded is None:
            raise DatasetError(f"homestead: could not read back the cache entry {folder}")
    images, tables, meta = loaded
    info = {**params, "generator_version": GENERATOR_VERSION, "styles": list(STYLES),
            "scenes": list(SCENES), "coarse_categories": list(COARSE),
            "categories": list(LEAF_NAMES), "label_noise": LABEL_NOISE,
            "tasks": ["knn", "classify", "retrieval", "ctr", "online"], "cache_dir": str(folder),
            "generated_seconds": meta.get("seconds")}
    logs = {name: tables[name] for name in TABLES if name not in ("items", "latents")}
    return Dataset(name="homestead", table=tables["items"], image_source=array_image_source(images),
                   image_size=params["image_size"], fingerprint=fp, logs=logs, info=info,
                   latents=tables["latents"],
                   simulator=UserModel.from_tables(tables["users"], tables["item_latents"]))


def _behaviour_key() -> tuple[str, ...]:
    """The behaviour tables' version in the fingerprint (``behaviour.BEHAVIOUR_VERSION``: the
    user model is stored since 1), apart from GENERATOR_VERSION, the pictures' version."""
    return ("behaviour", BEHAVIOUR_VERSION)
