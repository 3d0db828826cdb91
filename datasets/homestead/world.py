"""The world: catalogue, covers, queries, splits, label noise and the item table, from a seed.

Why its own module: this is where the parts meet. It decides what exists (products with
balanced leaves and styles, rooms furnished mostly in one style, scene-crop queries), which
split each item is in, and how the labels users of the suite see differ from the truth
(``LABEL_NOISE``); ``generate`` runs everything from one seed, each part on its own random
stream, so e.g. more queries do not change the products or covers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import nuisance as nz
from .behaviour import behaviour_log
from .furniture import Product, make_product
from .materials import draw as draw_material
from .nuisance import COVER, PRODUCT, QUERY, Nuisance
from .render import Shot, render
from .scene import compose, foreground_clutter, scene_weights
from .shapes import CX, CY, HH, HW, PLAIN, TAP, scale_rgb, shape
from .titles import make_title
from .vocabulary import COARSE, LEAF_NAMES, SCENES, STYLES, balanced, pick

# Image-search queries, chosen by measuring (issue 14): with views 1.1-1.7x the product's box,
# shifts of 0.12, up to two foreground objects and light 0.7-1.2, every trained extractor's
# frozen recall@10 was within 0.035 of random's on 1,209 test queries; with these it spreads
# from 0.02 (random) to 0.11, intervals about +-0.017. Queries beyond one per train and test
# product go to test products only (``_make_queries``).
QUERY_VIEW = (1.0, 1.25)   # side of the query view over the product box's longer side
QUERY_SHIFT = 0.05         # centre shift, as a share of the view
QUERY_CLUTTER_MAX = 0      # foreground objects (vases, books, plants) in front of the product
QUERY_LIGHT = (0.9, 1.1)   # overall light
QUERY_TINT = 0.05          # per-channel gain spread around the light
PRETRAIN_SHARE = 0.30        # of products, for the supervised baseline (coarse categories)
TRAIN_SHARE = 0.60           # of everything that is not pretrain
COLD_START_SHARE = 0.10      # covers first published on the last day
LABEL_NOISE = 0.04           # share of style / scene labels flipped


PLANKS = (0.12, 0, 42.0, 0.0, 1.0, 0, 0, 0, 0.05, 60, 3)  # a product shot's floor boards


def _product_shot(prod: Product, g: np.random.Generator, n: Nuisance,
                  i: int, material: int = -1) -> tuple[Shot, Latent]:
    """A catalogue photo: the product on a plain light background with small jitter (and,
    with the nuisance factors on, a backdrop across styles, camera, light, props, noise)."""
    bg = tuple(np.clip(g.uniform(0.9, 0.97) + g.normal(0, 0.006, 3), 0, 1).tolist())
    a = prod.aspect
    draws = n.draws(PRODUCT, i)
    backdrop = nz.room_backdrop(n.backgrounds, draws("backgrounds")) if n.backgrounds else None
    if backdrop is None:
        prims = [shape(-5, -5, 5, 5, bg, shade=-0.08)]
    else:  # a wall and a floor the product stands on, in colours and patterns of any style
        bg = backdrop["wall"]
        pattern = nz.bold(backdrop["wall_tex"]) if backdrop["wall_tex"] is not None else PLAIN
        prims = [shape(-5, -5, 5, 1.0, bg, pattern, shade=-0.08),
                 shape(-5, 1.0, 5, 5, backdrop["floor"], PLANKS)]
    prims.append(shape(0.05 * a, 0.96, 0.95 * a, 1.03, scale_rgb(bg, 0.7), rnd=1.0, alpha=0.5))
    prims_arr = np.concatenate([np.asarray(prims, np.float32), prod.prims])
    side = max(a, 1.0) * g.uniform(1.12, 1.3)
    cx, cy = a / 2 + g.normal(0, 0.03) * side, 0.5 + g.normal(0, 0.03) * side
    gain = tuple((g.uniform(0.96, 1.04) * g.uniform(0.99, 1.01, 3)).tolist())
    shot = Shot(prims_arr, (cx - side / 2, cy - side / 2, side), gain, 1.0, 0.006)
    props = _props(n, draws, lambda gc: (gc.uniform(-0.1, 1.1) * a, 1.0,
                                         gc.uniform(0.25, 0.5)))
    return _disturb(shot, n, draws, props, backdrop, material)


def _split_products(leaves: np.ndarray, g: np.random.Generator) -> np.ndarray:
    """Stratified by leaf so that every leaf (and coarse category) is in every split, as far as
    its count allows (from 3 products per leaf)."""
    split = np.empty(len(leaves), dtype=object)
    for leaf in np.unique(leaves):
        idx = g.permutation(np.flatnonzero(leaves == leaf))
        q = (np.arange(len(idx)) + 0.5) / len(idx)
        cut = PRETRAIN_SHARE + (1 - PRETRAIN_SHARE) * TRAIN_SHARE
        split[idx] = np.where(q < PRETRAIN_SHARE, "pretrain", np.where(q < cut, "train", "test"))
    return split.astype(str)



@dataclass
class Catalogue:
    """The products and the arrays rooms are furnished from."""

    products: list[Product]
    leaf: np.ndarray      # leaf index per product
    style: np.ndarray     # style index per product
    coarse: np.ndarray    # coarse index per product
    split: np.ndarray     # "pretrain" | "train" | "test"
    pools: dict[str, np.ndarray]  # split -> product indices that may furnish rooms of that split
    affinity: np.ndarray  # [scene, leaf]
    colourway: np.ndarray  # index into nuisance.PALETTE per product, -1: its style's colours
    material: np.ndarray  # style index of the signature material per product, -1: none


def _make_catalogue(n: int, g: np.random.Generator, g_split: np.random.Generator,
                    nuis: Nuisance) -> Catalogue:
    """Products with balanced leaves and styles (drawn independently), split by leaf; a share
    of them in a colourway of the palette shared by all styles (``nuisance.colourway``)."""
    leaf, style = balanced(g, n, len(LEAF_NAMES)), balanced(g, n, len(STYLES))
    ways = [nz.colourway(nuis.colourways, nuis.draws(PRODUCT, i)("colourways"))
            if nuis.colourways else None for i in range(n)]
    mats = [draw_material(nuis.materials, STYLES[st], nuis.draws(PRODUCT, i)("materials"))
            if nuis.materials else None for i, st in enumerate(style)]
    products = [make_product(LEAF_NAMES[lf], STYLES[st], g, way, mat)
                for lf, st, way, mat in zip(leaf, style, ways, mats)]
    coarse = np.array([COARSE.index(p.coarse) for p in products])
    split = _split_products(leaf, g_split)
    pools = {s: np.flatnonzero(split == s) for s in ("train", "test")}
    for s in pools:  # tiny worlds: a split without products borrows the other non-pretrain ones
        if not len(pools[s]):
            pools[s] = np.flatnonzero(split != "pretrain")
    colourway = np.array([-1 if w is None else w["index"] for w in ways])
    material = np.array([-1 if m is None else m["index"] for m in mats])
    return Catalogue(products, leaf, style, coarse, split, pools, scene_weights(), colourway,
                     material)


def _pick_members(cat: Catalogue, scene_i: int, style_i: int, k: int, split: str,
                  g: np.random.Generator, first: int | None = None) -> list[int]:
    """Products for a room of a split: fitting its scene, mostly in its dominant style (at most
    a minority off-style), few repeats of a coarse category."""
    pool = cat.pools[split]
    n_off = min(int(g.binomial(k, 0.25)), (k - 1) // 2)
    off = set(g.choice(k, n_off, replace=False).tolist())
    chosen: list[int] = [] if first is None else [first]
    base = cat.affinity[scene_i, cat.leaf[pool]]
    while len(chosen) < k:
        want = style_i if len(chosen) not in off else int(g.integers(len(STYLES)))
        w = base * np.where(cat.style[pool] == want, 1.0, 0.03)
        for c in chosen:
            w = w * (pool != c) * np.where(cat.coarse[pool] == cat.coarse[c], 0.4, 1.0)
        if w.sum() <= 0:
            w = np.ones(len(pool))
        chosen.append(int(pool[g.choice(len(pool), p=w / w.sum())]))
    return chosen



def _flip(labels: np.ndarray, vocab: tuple[str, ...], g: np.random.Generator) -> np.ndarray:
    """Label noise: replace a share of labels by a different random label."""
    out = labels.astype(object).copy()
    for i in np.flatnonzero(g.random(len(labels)) < LABEL_NOISE):
        out[i] = pick(g, tuple(v for v in vocab if v != labels[i]))
    return out.astype(str)


Latent = dict[str, float]


Props = tuple[list[list], int]  # primitive rows of foreground objects, how many objects


def _props(n: Nuisance, draws: nz.ItemDraws,
           where: Callable[[np.random.Generator], tuple[float, float, float]]) -> Props:
    """0..``clutter`` foreground objects; ``where(g)`` gives each one's (x, floor y, height)."""
    if not n.clutter:
        return [], 0
    g = draws("clutter")
    count = nz.clutter_count(n.clutter, g)
    out: list[list] = []
    for _ in range(count):
        out += foreground_clutter(g, *where(g))
    return out, count


def _disturb(shot: Shot, n: Nuisance, draws: nz.ItemDraws, props: Props,
             backdrop: dict | None, material: int = -1, cull: bool = False,
             framing: float = 1.0, lift: float = 0.0) -> tuple[Shot, Latent]:
    """Props in front, then camera, light and sensor noise on a shot; the values drawn are
    returned for the latents table (with the JPEG quality and the mirror flag, which
    ``generate`` applies to the rendered pixels). Factors at 0 leave the shot exactly as it was."""
    prims, view, gain, contrast, noise = shot.prims, shot.view, shot.gain, shot.contrast, shot.noise
    rows, count = props
    latent: Latent = {"backdrop": -1 if backdrop is None else backdrop["index"], "clutter": count,
                      "material": material, "height": lift}
    if lift:  # a room photo's camera height (``nuisance.camera_height``), before the camera
        view = (view[0], view[1] + lift * view[2], view[2])
    if rows:
        prims = np.concatenate([prims, np.asarray(rows, np.float32)])
    cam = nz.camera(n.camera, draws("camera"), framing) if n.camera else (1.0, 0.0, 0.0, 0.0)
    if n.camera:
        prims, view = nz.apply_camera(prims, view, cam)
    if cull:
        prims = _cull(prims, *view)
    bright, con, cast = nz.light(n.light, draws("light")) if n.light else (1.0, 1.0, 0.0)
    if n.light:
        gain, contrast = nz.lit(gain, bright, cast), contrast * con
    sigma = nz.sensor_sigma(n.noise, draws("noise"))
    latent.update(zoom=cam[0], shift_x=cam[1], shift_y=cam[2], tilt=cam[3], brightness=bright,
                  contrast=con, cast=cast, noise=sigma,
                  jpeg=nz.jpeg_quality(n.jpeg, draws("jpeg")),
                  mirror=nz.mirrored(n.mirror, draws("mirror")))
    return Shot(prims, view, gain, contrast, noise + sigma if sigma else noise), latent


def _cover_light(g: np.random.Generator) -> tuple[float, tuple[float, float, float], float]:
    """Light warmth in [-1, 1]: the purely visual trait users have a taste for."""
    warmth = float(g.uniform(-1, 1))
    b = g.uniform(0.9, 1.08)
    gain = (b * (1 + 0.14 * warmth), b * (1 + 0.02 * warmth), b * (1 - 0.14 * warmth))
    return warmth, gain, float(g.uniform(0.92, 1.05))



def _make_covers(cat: Catalogue, n: int, n_days: int, g: np.random.Generator,
                 g_title: np.random.Generator, nuis: Nuisance
                 ) -> tuple[list[Shot], pd.DataFrame, list[Latent]]:
    """Room scenes with balanced scene types and dominant styles, their titles, publish days
    (a share only on the last day: cold start) and light; one row of truth per cover."""
    scene, style = balanced(g, n, len(SCENES)), balanced(g, n, len(STYLES))
    split = np.where(g.random(n) < TRAIN_SHARE, "train", "test")
    cold = g.random(n) < COLD_START_SHARE
    early = np.where(g.random(n) < 0.5, 0, g.integers(0, n_days - 1, n))
    shots, warmth, titles, latents = [], np.zeros(n), [], []
    mix = np.zeros((n, len(COARSE)))
    for j in range(n):
        draws = nuis.draws(COVER, j)
        backdrop = (nz.room_backdrop(nuis.backgrounds, draws("backgrounds"))
                    if nuis.backgrounds else None)
        material = (draw_material(nuis.materials, STYLES[style[j]], draws("materials"))
                    if nuis.materials else None)
        members = _pick_members(cat, scene[j], style[j], int(g.integers(2, 5)), split[j], g)
        room = compose(SCENES[scene[j]], STYLES[style[j]], members, cat.products, g,
                       backdrop=backdrop, material=material)
        warmth[j], gain, contrast = _cover_light(g)
        x0, y0, side = g.uniform(-0.04, 0.04), g.uniform(-0.04, 0.04), g.uniform(0.96, 1.04)
        props = _props(nuis, draws, lambda gc: (gc.uniform(0.0, 1.0), gc.uniform(0.85, 1.05),
                                                gc.uniform(0.12, 0.3)))
        lift = nz.camera_height(nuis.height, draws("height"))
        shot, latent = _disturb(Shot(room.prims, (x0, y0, side), gain, contrast, 0.012), nuis,
                                draws, props, backdrop, _index(material), lift=lift)
        shots.append(shot)
        latents.append(latent)
        titles.append(make_title(STYLES[style[j]], SCENES[scene[j]],
                                 [cat.products[m].leaf for m in members], g_title))
        np.add.at(mix[j], cat.coarse[members], 1 / len(members))
    truth = pd.DataFrame({"item_id": [f"c{j:05d}" for j in range(n)],
                          "true_style": np.array(STYLES)[style],
                          "true_scene": np.array(SCENES)[scene], "split": split,
                          "publish_day": np.where(cold, n_days - 1, early), "title": titles,
                          "warmth": warmth.round(4),
                          **{f"mix_{c}": mix[:, k] for k, c in enumerate(COARSE)}})
    return shots, truth, latents


def _make_queries(cat: Catalogue, n: int, g: np.random.Generator, nuis: Nuisance
                  ) -> tuple[list[Shot], np.ndarray, list[Latent]]:
    """Scene-crop queries: every train and test product once, then further queries of test
    products only (they sharpen the measurement; more train queries would only make the
    self-supervised extractors' epochs longer)."""
    eligible = np.flatnonzero(cat.split != "pretrain")
    first = g.permutation(eligible)[:n]
    tested = np.flatnonzero(cat.split == "test")
    rest = n - len(first)
    reps = -(-rest // max(1, len(tested))) if rest > 0 and len(tested) else 0
    extra = np.concatenate([g.permutation(tested) for _ in range(reps)] + [np.zeros(0, int)])
    targets = np.concatenate([first, extra[:max(rest, 0)]]).astype(np.int64)
    made = [_query_shot(cat, int(t), g, nuis, j) for j, t in enumerate(targets)]
    return [shot for shot, _ in made], targets, [latent for _, latent in made]


def generate(params: dict[str, int]) -> tuple[np.ndarray, pd.DataFrame, dict[str, pd.DataFrame]]:
    """The whole world from params; each part draws from its own stream of the seed, so e.g.
    more queries do not change the products or covers."""
    seeds = np.random.SeedSequence([params["seed"], 20240611]).spawn(6)
    g_prod, g_split, g_cover, g_query, g_log, g_title = (np.random.default_rng(s) for s in seeds)
    nuis = Nuisance.from_params(params)
    cat = _make_catalogue(params["n_products"], g_prod, g_split, nuis)
    made = [_product_shot(p, g_prod, nuis, i, int(cat.material[i]))
            for i, p in enumerate(cat.products)]
    product_shots, product_latents = [s for s, _ in made], [lt for _, lt in made]
    cover_shots, covers, cover_latents = _make_covers(cat, params["n_covers"], params["n_days"],
                                                      g_cover, g_title, nuis)
    query_shots, targets, query_latents = _make_queries(cat, params["n_queries"], g_query, nuis)
    images = render(product_shots + cover_shots + query_shots, params["image_size"],
                    params["seed"])
    nuisance = pd.DataFrame(product_latents + cover_latents + query_latents)
    if len(nuisance):
        nz.mirror(images, nuisance["mirror"].to_numpy())
        nz.compress(images, nuisance["jpeg"].to_numpy())
    table = _item_table(cat, covers, targets, g_split)
    logs = behaviour_log(covers, params["n_users"], params["n_days"],
                         params["impressions_per_user_day"], g_log)
    logs["latents"] = _latent_table(cat, covers, targets, table, nuisance)
    return images, table, logs


def _query_shot(cat: Catalogue, t: int, g: np.random.Generator, nuis: Nuisance,
                j: int) -> tuple[Shot, Latent]:
    """A scene-crop query: a room holding the target and 1-3 other products of its split, the
    view cropped around the target (scale and shift jitter), other light (``QUERY_*``); the
    nuisance factors add a backdrop, props, camera, light and noise of the query's own."""
    draws = nuis.draws(QUERY, j)
    backdrop = (nz.room_backdrop(nuis.backgrounds, draws("backgrounds"))
                if nuis.backgrounds else None)
    fit = cat.affinity[:, cat.leaf[t]]
    scene_i = int(g.choice(len(SCENES), p=fit / fit.sum()))
    style_i = int(cat.style[t]) if g.random() < 0.6 else int(g.integers(len(STYLES)))
    material = (draw_material(nuis.materials, STYLES[style_i], draws("materials"))
                if nuis.materials else None)
    members = _pick_members(cat, scene_i, style_i, int(g.integers(2, 5)), cat.split[t], g,
                            first=t)
    room = compose(SCENES[scene_i], STYLES[style_i], members, cat.products, g, front=t,
                   backdrop=backdrop, material=material)
    x0, y0, w, h = room.boxes[room.members.index(t)]
    side = max(w, h) * g.uniform(*QUERY_VIEW)
    cx = x0 + w / 2 + g.uniform(-QUERY_SHIFT, QUERY_SHIFT) * side
    cy = y0 + h / 2 + g.uniform(-QUERY_SHIFT, QUERY_SHIFT) * side
    clutter = []
    for _ in range(int(g.integers(0, QUERY_CLUTTER_MAX + 1))):
        edge = g.choice([-1, 1])
        clutter += foreground_clutter(g, cx + edge * g.uniform(0.2, 0.5) * side,
                                      cy + g.uniform(0.25, 0.5) * side, g.uniform(0.15, 0.3) * side)
    prims = room.prims if not clutter else np.concatenate([room.prims,
                                                          np.asarray(clutter, np.float32)])
    light = g.uniform(*QUERY_LIGHT)
    gain = tuple((light * g.uniform(1 - QUERY_TINT, 1 + QUERY_TINT, 3)).tolist())
    view = (cx - side / 2, cy - side / 2, side)
    shot = Shot(prims, view, gain, float(g.uniform(0.75, 1.1)), float(g.uniform(0.015, 0.04)))
    props = _props(nuis, draws, lambda gc: (
        cx + gc.choice([-1, 1]) * gc.uniform(0.15, 0.5) * side,
        cy + gc.uniform(0.25, 0.55) * side, gc.uniform(0.2, 0.4) * side))
    return _disturb(shot, nuis, draws, props, backdrop, _index(material), cull=True,
                    framing=nz.QUERY_CAMERA)


def _index(material: dict | None) -> int:
    """The latent of a room's material: its signature style's index, -1 for none."""
    return -1 if material is None else int(material["index"])


def _cull(prims: np.ndarray, x0: float, y0: float, side: float) -> np.ndarray:
    """Drop primitives that cannot touch the view (a crop shows a small part of its room)."""
    reach = np.hypot(prims[:, HW] * (1 + np.abs(prims[:, TAP])), prims[:, HH])
    keep = ((prims[:, CX] + reach > x0) & (prims[:, CX] - reach < x0 + side)
            & (prims[:, CY] + reach > y0) & (prims[:, CY] - reach < y0 + side))
    return prims[keep]


def _item_table(cat: Catalogue, covers: pd.DataFrame, targets: np.ndarray,
                g: np.random.Generator) -> pd.DataFrame:
    """One row per image in render order: products, covers, queries; labels as strings, noisy."""
    n_p, n_c, n_q = len(cat.products), len(covers), len(targets)
    p_ids = np.array([f"p{i:05d}" for i in range(n_p)])
    p_style = _flip(np.array(STYLES)[cat.style], STYLES, g)
    leaf, coarse = np.array(LEAF_NAMES)[cat.leaf], np.array(COARSE)[cat.coarse]
    none_p, none_c, none_q = [None] * n_p, [None] * n_c, [None] * n_q
    frames = [
        pd.DataFrame(dict(id=p_ids, role="product", split=cat.split, title="", style=p_style,
                          scene=none_p, category=leaf, coarse_category=coarse, identity=p_ids,
                          publish_day=none_p)),
        pd.DataFrame(dict(id=covers["item_id"], role="content", split=covers["split"],
                          title=covers["title"],
                          style=_flip(covers["true_style"].to_numpy(), STYLES, g),
                          scene=_flip(covers["true_scene"].to_numpy(), SCENES, g),
                          category=none_c, coarse_category=none_c, identity=none_c,
                          publish_day=covers["publish_day"])),
        pd.DataFrame(dict(id=[f"q{j:05d}" for j in range(n_q)], role="query",
                          split=cat.split[targets], title="", style=p_style[targets],
                          scene=none_q, category=leaf[targets], coarse_category=coarse[targets],
                          identity=p_ids[targets], publish_day=none_q)),
    ]
    table = pd.concat([f for f in frames if len(f)], ignore_index=True)
    table["publish_day"] = table["publish_day"].astype("Int64")
    return table


def _latent_table(cat: Catalogue, covers: pd.DataFrame, targets: np.ndarray,
                  table: pd.DataFrame, nuisance: pd.DataFrame) -> pd.DataFrame:
    """The ground truth each image was made from, one row per item (render order), before
    label noise: style (a product's, a cover's dominant one, a query's target's), scene
    (covers), leaf category and identity (products, queries) and the light warmth (covers);
    then every nuisance value drawn (``nuisance_*``: the product's colourway, -1 for its
    style's own colours, none for covers; backdrop, -1 for the style's own; camera, light,
    props, sensor noise and JPEG quality, 0 for none; mirror, 1 for a picture mirrored left to
    right; height, a cover's camera height (0 for products and queries); material, the style
    index of the signature material on a product's upholstery or on a cover's or query scene's
    walls and rug, -1 for none: a query's room may be of another style than its product)."""
    n_p, n_c = len(cat.products), len(covers)
    style = np.concatenate([np.array(STYLES)[cat.style], covers["true_style"].to_numpy(),
                            np.array(STYLES)[cat.style[targets]]])
    role = table["role"].to_numpy()
    latents = pd.DataFrame({"id": table["id"].to_numpy(), "style": style,
                            "scene": table["scene"].where(role != "content", None),
                            "category": table["category"], "identity": table["identity"],
                            "warmth": np.nan})
    latents.loc[n_p:n_p + n_c - 1, "scene"] = covers["true_scene"].to_numpy()
    latents.loc[n_p:n_p + n_c - 1, "warmth"] = covers["warmth"].to_numpy()
    way = np.concatenate([cat.colourway, np.full(n_c, np.nan), cat.colourway[targets]])
    columns = {"colourway": way, **{k: nuisance[k].to_numpy() for k in nuisance.columns}}
    for key, values in columns.items():
        latents[f"nuisance_{key}"] = values
    return latents


