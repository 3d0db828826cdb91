"""The words of the homestead world: styles, scene types, categories and what each one looks like.

Every other module draws from these tuples, so a label means the same thing in the furniture,
the rooms, the titles and the behaviour log. ``StyleSpec`` is the visual meaning of a style
(palettes, materials, legs, trim, walls, floor, plants); ``LEAVES`` and ``SCENE_LEAVES`` the
shape and whereabouts of each leaf category. ``pick`` and ``balanced`` are the two draws over
such a vocabulary that every part of the generator uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

STYLES = ("nordic", "industrial", "vintage", "modern", "rustic", "boho")
SCENES = ("living_room", "bedroom", "dining_room", "study", "kitchen", "balcony")
COARSE = ("sofa", "chair", "table", "bed", "lamp", "cabinet")

# leaf -> (coarse category, width / height, height in room units at mid depth)
LEAVES: dict[str, tuple[str, float, float]] = {
    "loveseat": ("sofa", 1.7, 0.24), "three_seater": ("sofa", 2.6, 0.24),
    "chesterfield": ("sofa", 2.3, 0.22), "chaise_longue": ("sofa", 2.4, 0.22),
    "sectional": ("sofa", 3.0, 0.23), "futon": ("sofa", 2.2, 0.18),
    "dining_chair": ("chair", 0.6, 0.28), "armchair": ("chair", 1.0, 0.26),
    "stool": ("chair", 0.65, 0.16), "bar_stool": ("chair", 0.5, 0.28),
    "office_chair": ("chair", 0.7, 0.28), "rocking_chair": ("chair", 0.85, 0.28),
    "dining_table": ("table", 1.9, 0.19), "coffee_table": ("table", 2.4, 0.10),
    "side_table": ("table", 0.85, 0.15), "round_table": ("table", 1.2, 0.19),
    "desk": ("table", 1.8, 0.2), "console_table": ("table", 2.0, 0.19),
    "single_bed": ("bed", 1.7, 0.2), "double_bed": ("bed", 2.2, 0.22),
    "bunk_bed": ("bed", 1.7, 0.42), "canopy_bed": ("bed", 2.0, 0.44),
    "platform_bed": ("bed", 2.4, 0.14), "crib": ("bed", 1.3, 0.2),
    "floor_lamp": ("lamp", 0.45, 0.45), "table_lamp": ("lamp", 0.7, 0.15),
    "arc_lamp": ("lamp", 1.0, 0.46), "pendant_lamp": ("lamp", 0.6, 0.2),
    "desk_lamp": ("lamp", 0.75, 0.15), "lantern": ("lamp", 0.55, 0.13),
    "wardrobe": ("cabinet", 0.75, 0.48), "dresser": ("cabinet", 1.3, 0.26),
    "bookcase": ("cabinet", 0.7, 0.45), "sideboard": ("cabinet", 2.1, 0.2),
    "nightstand": ("cabinet", 0.85, 0.14), "tv_stand": ("cabinet", 2.8, 0.11),
}
LEAF_NAMES = tuple(LEAVES)
HANGING = frozenset({"pendant_lamp"})

# How likely each leaf is in each scene type (unlisted leaves get a small base weight).
SCENE_LEAVES: dict[str, dict[str, float]] = {
    "living_room": dict(three_seater=3, loveseat=2, sectional=2, chesterfield=1.5, armchair=3,
                        chaise_longue=1, coffee_table=3, side_table=2, floor_lamp=2, arc_lamp=2,
                        tv_stand=2, bookcase=1, sideboard=1),
    "bedroom": dict(single_bed=2, double_bed=3, bunk_bed=1, canopy_bed=1.5, platform_bed=2, crib=1,
                    nightstand=3, dresser=2, wardrobe=2, table_lamp=2, floor_lamp=1),
    "dining_room": dict(dining_table=4, round_table=2, dining_chair=4, sideboard=2, pendant_lamp=2,
                        console_table=1),
    "study": dict(desk=4, office_chair=4, bookcase=3, desk_lamp=3, armchair=1, floor_lamp=1,
                  console_table=1),
    "kitchen": dict(bar_stool=4, round_table=2, stool=3, pendant_lamp=3, dining_chair=2,
                    sideboard=1, dining_table=1, lantern=0.5),
    "balcony": dict(rocking_chair=3, stool=2, side_table=3, lantern=3, futon=1, armchair=1.5,
                    round_table=1.5, chaise_longue=1.5, coffee_table=1),
}
SCENE_HORIZON = dict(living_room=0.62, bedroom=0.64, dining_room=0.6, study=0.63, kitchen=0.66,
                     balcony=0.7)

# Styles: palettes, materials and details. Products, rooms and decor all read their style here.

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class StyleSpec:
    body: tuple[RGB, ...]      # upholstery / painted surfaces
    wood: tuple[RGB, ...]      # table tops, frames, cabinets
    accent: tuple[RGB, ...]    # trim, pillows, decor
    body_tex: tuple[str, ...]
    wood_tex: str
    leg: str                   # tapered | hairpin | turned | chrome | chunky | cone
    trim: str                  # none | rivets | piping | line | band | fringe
    leg_h: float
    rnd: float                 # roundness of cushions and corners
    shade: float               # vertical gradient (gloss)
    wall: tuple[RGB, ...]
    wall_tex: tuple[str, ...]
    floor: RGB
    plants: float              # expected number of plants in a room


STYLE_SPECS: dict[str, StyleSpec] = {
    "nordic": StyleSpec(
        body=((0.93, 0.93, 0.91), (0.8, 0.81, 0.8), (0.7, 0.78, 0.85), (0.86, 0.81, 0.73)),
        wood=((0.87, 0.76, 0.58), (0.92, 0.86, 0.74)), accent=((0.55, 0.63, 0.7), (0.9, 0.87, 0.8)),
        body_tex=("fabric",), wood_tex="fine_grain", leg="tapered", trim="none", leg_h=0.15,
        rnd=0.45, shade=0.12, wall=((0.95, 0.95, 0.93), (0.88, 0.9, 0.9)), wall_tex=("plain",),
        floor=(0.86, 0.77, 0.62), plants=0.7),
    "industrial": StyleSpec(
        body=((0.33, 0.31, 0.3), (0.52, 0.32, 0.19), (0.46, 0.46, 0.44), (0.24, 0.27, 0.31)),
        wood=((0.36, 0.26, 0.18), (0.2, 0.2, 0.21)), accent=((0.68, 0.4, 0.2), (0.12, 0.12, 0.13)),
        body_tex=("leather",), wood_tex="grain", leg="hairpin", trim="rivets", leg_h=0.13,
        rnd=0.06, shade=0.25, wall=((0.62, 0.33, 0.25), (0.58, 0.58, 0.56)),
        wall_tex=("brick", "concrete"), floor=(0.42, 0.42, 0.41), plants=0.2),
    "vintage": StyleSpec(
        body=((0.8, 0.6, 0.2), (0.2, 0.5, 0.5), (0.56, 0.16, 0.2), (0.5, 0.55, 0.3),
              (0.84, 0.6, 0.6)),
        wood=((0.46, 0.28, 0.15), (0.56, 0.36, 0.2)), accent=((0.95, 0.9, 0.74), (0.75, 0.6, 0.25)),
        body_tex=("stripes", "velvet"), wood_tex="grain", leg="turned", trim="piping", leg_h=0.12,
        rnd=0.7, shade=0.2, wall=((0.93, 0.87, 0.72), (0.7, 0.78, 0.66), (0.88, 0.74, 0.72)),
        wall_tex=("wallpaper",), floor=(0.6, 0.42, 0.25), plants=0.4),
    "modern": StyleSpec(
        body=((0.97, 0.97, 0.97), (0.09, 0.09, 0.1), (0.86, 0.1, 0.12), (0.1, 0.26, 0.76),
              (0.6, 0.6, 0.62)),
        wood=((0.96, 0.96, 0.96), (0.1, 0.1, 0.11)), accent=((0.08, 0.08, 0.08), (0.78, 0.79, 0.83)),
        body_tex=("plain",), wood_tex="plain", leg="chrome", trim="line", leg_h=0.08, rnd=0.12,
        shade=0.35, wall=((0.98, 0.98, 0.98), (0.32, 0.32, 0.34)), wall_tex=("plain",),
        floor=(0.82, 0.82, 0.82), plants=0.3),
    "rustic": StyleSpec(
        body=((0.45, 0.3, 0.18), (0.62, 0.46, 0.3), (0.86, 0.8, 0.7), (0.26, 0.36, 0.21),
              (0.5, 0.2, 0.12)),
        wood=((0.36, 0.22, 0.12), (0.5, 0.33, 0.18)), accent=((0.7, 0.2, 0.15), (0.85, 0.8, 0.7)),
        body_tex=("coarse_grain", "plaid"), wood_tex="coarse_grain", leg="chunky", trim="band",
        leg_h=0.1, rnd=0.2, shade=0.15, wall=((0.68, 0.52, 0.35), (0.8, 0.74, 0.64)),
        wall_tex=("panel", "concrete"), floor=(0.4, 0.27, 0.15), plants=0.8),
    "boho": StyleSpec(
        body=((0.8, 0.45, 0.3), (0.86, 0.65, 0.3), (0.9, 0.6, 0.6), (0.6, 0.7, 0.55),
              (0.92, 0.85, 0.7)),
        wood=((0.8, 0.65, 0.42), (0.7, 0.52, 0.32)), accent=((0.3, 0.5, 0.45), (0.6, 0.2, 0.3)),
        body_tex=("zigzag", "plaid", "weave"), wood_tex="weave", leg="cone", trim="fringe",
        leg_h=0.08, rnd=0.6, shade=0.1, wall=((0.91, 0.79, 0.63), (0.82, 0.55, 0.42),
                                              (0.9, 0.72, 0.7)),
        wall_tex=("diamond",), floor=(0.78, 0.62, 0.45), plants=2.0),
}


def pick(g: np.random.Generator, options: tuple) -> Any:
    """One of ``options``, uniformly."""
    return options[int(g.integers(len(options)))]


def balanced(g: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n labels in 0..k-1 with counts as equal as possible, in random order."""
    return g.permutation(np.arange(n) % k)

