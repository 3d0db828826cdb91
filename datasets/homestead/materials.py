"""Style materials: what a style is made of, drawn at a scale a 32-px picture resolves.

Why its own module: the nuisance factors (``nuisance``) take colour away from style, as real
catalogues do, and in homestead-2.0's first hard world nothing was left that told styles apart
at 32 px: legs, trim and upholstery textures were 1-3 px wide and wall patterns shared between
styles (nordic and modern both plain, vintage and rustic both vertical stripes). In a real room
a style shows in its materials: brick and metal, slatted pale wood, patterned wallpaper, smooth
lacquer, planked logs, woven rattan. The ``materials`` option (percent) gives that share of
rooms, query scenes and products their style's signature material (``SIGNATURE``) on the wall,
the rug and the upholstery (and a kitchen's tiled wall, a balcony's side wall): a repeating
pattern of 5-7 px at 32 px, with the same mean as the plain surface, its colour whatever the
colourway or the backdrop says. A convolutional feature sees its orientation and layout
wherever it sits; raw pixels averaged to 8x8 (4 px blocks) keep a quarter to a half of its
contrast, at a phase and frequency of its own in every room, so two rooms of one style do not
agree on it there. The rest keep what homestead-1.1 or the backgrounds factor gave them.
Measured in docs/homestead.md ("Style materials"): with them on, the self-supervised
extractors' KNN style consistency rises above raw pixels'; 3 px patterns (the first try,
``ROOM_FREQ`` 10) left every extractor at chance.

The signatures differ in orientation and layout, not in colour or mean brightness: vertical
slats (nordic), brick courses (industrial), a diagonal lattice (vintage), smooth (modern),
horizontal planks with a grain wobble (rustic) and a woven grid (boho). ``materials`` draws on
its own random stream per item (``nuisance.ItemDraws``), like the nuisance factors, so it
changes pixels and its ``nuisance_material`` latent only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .shapes import PLAIN, Tex
from .vocabulary import STYLES

# Cycles per room unit (a cover's view is about one room unit wide, 32 px): 6 is 5.3 px.
ROOM_FREQ = 6.0
# Cycles per product unit (a product is one unit high; about 25 px in its catalogue shot).
PRODUCT_FREQ = 4.0

# a1, k1x, k1y, ph1, wobble, a2, k2x, k2y, noise amp, noise freq, sharpness; k in units of
# the base frequency. Every wave is a clipped sine, symmetric about 0: the mean is the plain
# colour's.
SIGNATURE: dict[str, Tex] = {
    "nordic": (0.45, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 4.0),       # vertical slats
    "industrial": (0.45, 0.0, 1.0, 0.0, 0.0, 0.15, 0.5, 0.0, 0.0, 1.0, 6.0),  # brick courses
    "vintage": (0.35, 0.8, 0.8, 0.0, 0.0, 0.35, -0.8, 0.8, 0.0, 1.0, 3.0),   # diagonal lattice
    "modern": PLAIN,                                                          # smooth lacquer
    "rustic": (0.45, 0.0, 0.8, 0.0, 1.2, 0.0, 0.0, 0.0, 0.0, 1.0, 3.0),      # wobbly planks
    "boho": (0.45, 0.8, 0.8, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 4.0),        # diagonal weave
}


def signature(style: str, base: float, g: np.random.Generator) -> Tex:
    """The style's material at ``base`` cycles per unit (frequency +-10% and phase per item)."""
    t = list(SIGNATURE[style])
    f = base * g.uniform(0.9, 1.1)
    for k in (1, 2, 6, 7):
        t[k] *= f
    t[3] = g.uniform(0, 2 * math.pi)
    return tuple(t)


def draw(share: int, style: str, g: np.random.Generator) -> dict[str, Any] | None:
    """For one room or product of ``style``: its signature materials (wall, rug, upholstery)
    with probability ``share`` percent, else None (the surfaces homestead-1.1 gave it)."""
    if not share or g.random() * 100 >= share:
        return None
    return {"index": STYLES.index(style), "room": signature(style, ROOM_FREQ, g),
            "rug": signature(style, ROOM_FREQ * 1.2, g),
            "product": signature(style, PRODUCT_FREQ, g)}
