"""Rooms: walls, floor, fixtures per scene type, decor per style, and furniture placed in them.

Why its own module: what makes a scene type recognisable (windows, curtains, kitchen tiles, a
balcony's railing) and how a style tints a room is separate from how furniture is drawn and
how pixels are rendered. Room units run 0..1 across the view, y down; ``compose`` places
products in perspective (further back is smaller) and stacks everything back to front.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .furniture import Product, place
from .nuisance import bold
from .shapes import PLAIN, Tex, bar, jitter_rgb, mix_rgb, scale_rgb, shape, texture
from .vocabulary import (
    HANGING,
    LEAF_NAMES,
    LEAVES,
    RGB,
    SCENE_HORIZON,
    SCENE_LEAVES,
    SCENES,
    STYLE_SPECS,
    pick,
)

SKY = (0.62, 0.8, 0.95)
TILE = (0.9, 0.9, 0.88)
FLOORS = dict(living_room="planks", bedroom="carpet", dining_room="parquet", study="planks",
              kitchen="tiles", balcony="deck")


def _window(g: np.random.Generator, x: float, y: float, w: float, h: float,
            frame: RGB, sky: RGB = SKY) -> list[list]:
    return [shape(x - 0.015, y - 0.015, x + w + 0.015, y + h + 0.015, frame),
            shape(x, y, x + w, y + h, sky, shade=-0.5),
            shape(x + w / 2 - 0.006, y, x + w / 2 + 0.006, y + h, frame),
            shape(x, y + h * 0.45 - 0.006, x + w, y + h * 0.45 + 0.006, frame)]


def plant(g: np.random.Generator, x: float, y: float, s: float) -> list[list]:
    """A potted plant standing at (x, y), s high: decor that says boho, rustic or balcony."""
    green = jitter_rgb(g, (0.25, 0.5, 0.25), 0.05)
    pot = jitter_rgb(g, (0.75, 0.42, 0.3), 0.05)
    leaves = [bar((x, y - 0.3 * s), (x + dx * s, y - s * dy), 0.12 * s, green, rnd=1.0)
              for dx, dy in ((-0.35, 0.85), (0.0, 1.0), (0.35, 0.8))]
    return leaves + [shape(x - 0.15 * s, y - 0.35 * s, x + 0.15 * s, y, pot, tap=-0.3)]


def _fixtures(scene: str, h: float, wall: RGB, frame: RGB, accent: RGB,
              g: np.random.Generator, sky: RGB = SKY, tile: RGB = TILE,
              material: Tex | None = None) -> list[list]:
    """What tells scene types apart besides their furniture (``sky`` and the kitchen's wall
    ``tile`` colour vary with the backgrounds nuisance; ``material``, the style's signature,
    covers the kitchen's tiled wall and the balcony's side wall, where a room shows the
    little wall it has)."""
    ps: list[list] = []
    if scene == "living_room":
        x = g.uniform(0.05, 0.5)
        ps += _window(g, x, g.uniform(0.1, 0.16), g.uniform(0.3, 0.42), 0.3, frame, sky)
    elif scene == "bedroom":
        x, w = g.uniform(0.2, 0.6), 0.2
        ps += _window(g, x, 0.12, w, 0.28, frame, sky)
        ps += [shape(x0, 0.07, x0 + 0.09, h - 0.08, accent, texture(g, "folds", True))
               for x0 in (x - 0.1, x + w + 0.01)]
        ps.append(shape(x - 0.12, 0.05, x + w + 0.12, 0.075, (0.3, 0.3, 0.3)))
    elif scene == "dining_room":
        ps.append(shape(-1, h - 0.22, 2, h, scale_rgb(wall, 0.85), texture(g, "panel", True)))
        ps.append(shape(-1, h - 0.235, 2, h - 0.215, scale_rgb(frame, 0.9)))
        ps += _window(g, g.uniform(0.1, 0.4), 0.08, g.uniform(0.4, 0.5), 0.22, frame, sky)
    elif scene == "study":
        for y in (0.12, 0.27):
            x0 = g.uniform(0.05, 0.3)
            books = jitter_rgb(g, (0.55, 0.35, 0.3), 0.15)
            ps += [shape(x0, y, x0 + 0.4, y + 0.08, books, texture(g, "books", True)),
                   shape(x0 - 0.01, y + 0.08, x0 + 0.41, y + 0.095, frame)]
        cx = g.uniform(0.7, 0.9)
        ps += [shape(cx - 0.06, 0.1, cx + 0.06, 0.22, (0.15, 0.15, 0.15), rnd=1.0),
               shape(cx - 0.05, 0.11, cx + 0.05, 0.21, (0.97, 0.97, 0.95), rnd=1.0),
               bar((cx, 0.16), (cx + 0.03, 0.13), 0.008, (0.1, 0.1, 0.1))]
    elif scene == "kitchen":
        cab = mix_rgb(frame, wall, 0.3)
        upper = texture(g, "panel", True)
        tiles = texture(g, "tiles", True)
        ps += [shape(0.02, 0.04, 0.98, 0.24, cab, upper, shade=0.2),
               shape(0.02, 0.24, 0.98, h - 0.13, tile, tiles if material is None else material),
               shape(0.02, h - 0.12, 0.98, h + 0.05, cab, texture(g, "panel", True)),
               shape(0.01, h - 0.145, 0.99, h - 0.115, (0.25, 0.25, 0.27))]
    else:  # balcony: sky instead of most of the wall, a railing, the building's side wall
        ps.append(shape(-1, -1, 2, h, sky, shade=-0.4))
        ps += [shape(x, y, x + g.uniform(0.12, 0.22), y + 0.05, (0.98, 0.98, 0.98), rnd=1.0)
               for x, y in zip(g.uniform(0.1, 0.8, 2), g.uniform(0.05, 0.3, 2))]
        left = g.random() < 0.5
        side = g.uniform(0.12, 0.25)
        ps.append(shape(-1 if left else 1 - side, -1, side if left else 2, h, wall,
                        PLAIN if material is None else material))
        rail = (0.2, 0.2, 0.22)
        ps.append(shape(-1, h - 0.21, 2, h - 0.19, rail))
        ps += [shape(x - 0.005, h - 0.19, x + 0.005, h, rail) for x in np.linspace(0, 1, 12)]
    return ps


def _decor(style: str, scene: str, h: float, accent: RGB, g: np.random.Generator,
           rug: Tex | None = None) -> list[list]:
    """Style-tinted decor: rug, wall art and plants (more plants for boho and balconies).
    ``rug`` replaces the rug's pattern (the style's signature material) after every draw."""
    spec = STYLE_SPECS[style]
    ps: list[list] = []
    if scene in ("living_room", "bedroom", "dining_room") and g.random() < 0.8:
        x = g.uniform(0.05, 0.3)
        x1 = x + g.uniform(0.5, 0.65)
        pattern = texture(g, pick(g, spec.body_tex), True)
        ps.append(shape(x, h + 0.15, x1, h + 0.28, accent, pattern if rug is None else rug,
                        rnd=0.3))
    if scene not in ("kitchen", "balcony") and g.random() < 0.7:
        x, y = g.uniform(0.55, 0.8), g.uniform(0.08, 0.2)
        art = jitter_rgb(g, pick(g, spec.body), 0.08)
        ps += [shape(x, y, x + 0.14, y + 0.16, scale_rgb(spec.wood[0], 0.8)),
               shape(x + 0.015, y + 0.015, x + 0.125, y + 0.145, art, texture(g, "zigzag"))]
    n_plants = g.poisson(spec.plants + (1.0 if scene == "balcony" else 0.0))
    for _ in range(min(n_plants, 3)):
        ps += plant(g, g.uniform(0.03, 0.97), g.uniform(h + 0.05, h + 0.2), g.uniform(0.1, 0.18))
    return ps


def _room(scene: str, style: str, g: np.random.Generator,
          backdrop: dict[str, Any] | None = None,
          material: dict[str, Any] | None = None) -> tuple[list[list], float]:
    """Background of a room: wall (tinted and patterned by style), floor (material by scene),
    skirting, fixtures and decor. Returns the primitives and the horizon height. A
    ``backdrop`` (``nuisance.room_backdrop``) replaces the style's wall colour (and, in some
    rooms, its pattern), floor tone and decor accent after every draw from ``g``; a
    ``material`` (``materials.draw``) puts the style's signature material on the wall and the
    rug, whatever the backdrop drew."""
    spec = STYLE_SPECS[style]
    h = SCENE_HORIZON[scene] + g.uniform(-0.03, 0.03)
    wall = jitter_rgb(g, pick(g, spec.wall), 0.03)
    frame = jitter_rgb(g, pick(g, spec.wood), 0.03)
    accent = jitter_rgb(g, pick(g, spec.body + spec.accent), 0.05)
    kind = FLOORS[scene]
    floor = spec.floor
    if kind == "carpet":
        floor = mix_rgb(pick(g, spec.body), (0.7, 0.7, 0.7), 0.4)
    elif kind == "tiles":
        floor = pick(g, ((0.85, 0.85, 0.83), (0.55, 0.56, 0.58)))
    wall_tex = texture(g, pick(g, spec.wall_tex), True)
    floor = jitter_rgb(g, floor, 0.03)
    floor_tex = texture(g, kind, True)
    sky, tile = SKY, TILE
    if backdrop is not None:
        wall, accent, sky, tile = (backdrop[k] for k in ("wall", "accent", "sky", "tile"))
        wall_tex = bold(wall_tex if backdrop["wall_tex"] is None else backdrop["wall_tex"])
        floor_tex = bold(floor_tex)
        if kind == "carpet":
            floor = mix_rgb(backdrop["accent"], (0.7, 0.7, 0.7), 0.4)
        elif kind != "tiles":  # tiles are grey or white in every style already
            floor = backdrop["floor"]
    if material is not None:
        wall_tex = material["room"]
    ps = [shape(-1, -1, 2, h, wall, wall_tex),
          shape(-1, h, 2, 2, floor, floor_tex, shade=-0.2),
          shape(-1, h - 0.02, 2, h, scale_rgb(frame, 0.9))]
    ps += _fixtures(scene, h, wall, frame, accent, g, sky, tile,
                    None if material is None else material["room"])
    ps += _decor(style, scene, h, accent, g, None if material is None else material["rug"])
    return ps, h


def foreground_clutter(g: np.random.Generator, x: float, y: float, s: float) -> list[list]:
    """Small foreground objects (vases, book stacks, plants) that partly hide a query's product."""
    kind = g.integers(3)
    colour = jitter_rgb(g, tuple(g.uniform(0.1, 0.9, 3)), 0.0)
    if kind == 0:
        return [shape(x - 0.2 * s, y - s, x + 0.2 * s, y, colour, rnd=0.9)]
    if kind == 1:
        return [shape(x - 0.4 * s + i * 0.05 * s, y - (i + 1) * 0.2 * s,
                      x + 0.4 * s - i * 0.05 * s, y - i * 0.2 * s,
                      jitter_rgb(g, colour, 0.2)) for i in range(3)]
    return plant(g, x, y, s)



def scene_weights() -> np.ndarray:
    """[scene, leaf] affinity, with a small base weight so no pool runs empty."""
    w = np.full((len(SCENES), len(LEAF_NAMES)), 0.05)
    for s, prefs in enumerate(SCENE_LEAVES.values()):
        for leaf, v in prefs.items():
            w[s, LEAF_NAMES.index(leaf)] = v
    return w


@dataclass
class Scene:
    """A furnished room in scene units, with where each product stands (for query crops)."""

    prims: np.ndarray
    members: list[int]           # product indices, back to front
    boxes: list[tuple[float, float, float, float]]  # x0, y0, w, h of each member
    horizon: float


def compose(scene: str, style: str, members: list[int], products: list[Product],
            g: np.random.Generator, front: int | None = None,
            backdrop: dict[str, Any] | None = None,
            material: dict[str, Any] | None = None) -> Scene:
    """Place products on the floor (perspective: further back is smaller) or from the ceiling,
    in slots across the room, and stack everything back to front (``front`` is drawn last so
    that other furniture never hides a query's product entirely)."""
    bg, h = _room(scene, style, g, backdrop, material)
    slots = g.permutation(len(members))
    placed = []
    for i, m in enumerate(members):
        prod = products[m]
        xc = (slots[i] + 0.5) / len(members) * 0.9 + 0.05 + g.uniform(-0.06, 0.06)
        if prod.leaf in HANGING:
            height = LEAVES[prod.leaf][2] * g.uniform(0.9, 1.15)
            y0, depth = g.uniform(-0.03, 0.04), -1.0
        else:
            yb = g.uniform(h + 0.06, 0.98)
            scale = 0.6 + 0.7 * (yb - h) / (1 - h)
            height = LEAVES[prod.leaf][2] * scale * g.uniform(0.92, 1.08)
            y0, depth = yb - height, yb
        w = prod.aspect * height
        placed.append((math.inf if m == front else depth, m, (xc - w / 2, y0, w, height)))
    placed.sort(key=lambda t: t[0])
    parts = [np.asarray(bg, np.float32)]
    parts += [place(products[m].prims, box[0], box[1], box[3]) for _, m, box in placed]
    return Scene(np.concatenate(parts), [m for _, m, _ in placed],
                 [box for _, _, box in placed], h)


