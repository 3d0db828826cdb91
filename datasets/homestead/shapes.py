"""Primitives: every shape of the world is one row of floats, the layout all drawing code shares.

Furniture, rooms and the renderer meet here: a drawer returns rows built with ``shape`` and
``bar``, the scene places and stacks them, and ``render`` evaluates each row as a signed-distance
rounded box (optionally rotated or tapered) with a material texture (``texture``). Keeping the
row layout (``CX`` ... ``SHADE``) in one module means a new column is added in one place.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .vocabulary import RGB

# The columns of a row: centre, half width and height, angle, roundness, taper, colour, alpha,
# two texture waves (amplitude, frequencies, phase, wobble), material noise (amplitude,
# frequency), wave sharpness, texture scale and vertical shade.
(CX, CY, HW, HH, ANG, RND, TAP, CR, CG, CB, ALPHA,
 A1, K1X, K1Y, PH1, WOB, A2, K2X, K2Y, AN, NF, SHARP, TSC, SHADE) = range(24)
NCOL = 24
NOISE_BITS = 6  # the material noise table is 64 x 64

Tex = tuple[float, ...]  # a1, k1x, k1y, ph1, wobble, a2, k2x, k2y, noise amp, noise freq, sharp
PLAIN: Tex = (0.0,) * 10 + (1.0,)


def texture(g: np.random.Generator, kind: str, room: bool = False) -> Tex:
    """Texture parameters for a named material; frequencies and phase vary per object so that
    two products of the same style are told apart by more than colour. ``room`` scales the
    frequencies for room-sized surfaces (texture units are room units there)."""
    f = g.uniform(0.85, 1.15) * (3.0 if room else 1.0)
    ph = g.uniform(0, 2 * math.pi)
    table: dict[str, Tex] = {
        "plain": PLAIN,
        "fabric": (0, 0, 0, 0, 0, 0, 0, 0, 0.06, 40 * f, 1),
        "velvet": (0.05, 0, 3 * f, ph, 0, 0, 0, 0, 0.05, 30 * f, 1),
        "leather": (0.06, 2 * f, 1 * f, ph, 0, 0, 0, 0, 0.14, 36 * f, 1),
        "stripes": (0.16, 7 * f, 0, ph, 0, 0, 0, 0, 0.03, 40, 2.5),
        "fine_grain": (0.05, 0, 22 * f, ph, 2.0, 0, 0, 0, 0.03, 50, 1),
        "grain": (0.1, 0, 16 * f, ph, 2.5, 0, 0, 0, 0.04, 40, 1),
        "coarse_grain": (0.2, 0, 9 * f, ph, 3.5, 0, 0, 0, 0.05, 30, 1.5),
        "plaid": (0.14, 6 * f, 0, ph, 0, 0.14, 0, 6 * f, 0.03, 40, 3),
        "weave": (0.12, 18 * f, 0, ph, 0, 0.12, 0, 18 * f, 0.0, 1, 2),
        "zigzag": (0.18, 6 * f, 6 * f, ph, 0, 0.12, -6 * f, 6 * f, 0.0, 1, 3),
        "brick": (0.12, 0, 14 * f, 0, 0, 0.08, 7 * f, 0, 0.1, 60, 6),
        "concrete": (0, 0, 0, 0, 0, 0, 0, 0, 0.09, 50 * f, 1),
        "wallpaper": (0.08, 12 * f, 0, ph, 0, 0, 0, 0, 0.02, 60, 3),
        "panel": (0.14, 8 * f, 0, ph, 0, 0, 0, 0, 0.06, 40, 4),
        "diamond": (0.08, 8 * f, 8 * f, ph, 0, 0.08, -8 * f, 8 * f, 0, 1, 2),
        "planks": (0.12, 0, 14 * f, ph, 1.0, 0, 0, 0, 0.05, 60, 3),
        "carpet": (0, 0, 0, 0, 0, 0, 0, 0, 0.1, 120 * f, 1),
        "parquet": (0.12, 10 * f, 0, 0, 0, 0.12, 0, 20 * f, 0.04, 60, 4),
        "tiles": (0.15, 6 * f, 0, 0, 0, 0.15, 0, 12 * f, 0.0, 1, 8),
        "deck": (0.15, 9 * f, 0, ph, 0, 0, 0, 0, 0.04, 60, 4),
        "books": (0.3, 40 * f, 0, ph, 0, 0.1, 13 * f, 0, 0.0, 1, 6),
        "folds": (0.12, 30 * f, 0, ph, 0, 0, 0, 0, 0, 1, 1),
    }
    return table[kind]


def shape(x0: float, y0: float, x1: float, y1: float, rgb: RGB, tex: Tex = PLAIN,
          rnd: float = 0.0, ang: float = 0.0, tap: float = 0.0, shade: float = 0.0,
          alpha: float = 1.0) -> list[float]:
    """A box from corner (x0, y0) to (x1, y1) as a primitive row. ``rnd`` in [0, 1] rounds the
    corners (1 = stadium/circle), ``tap`` > 0 widens it towards the bottom, ``ang`` rotates it
    (radians, about its centre), ``shade`` darkens it downwards."""
    return [(x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0) / 2, abs(y1 - y0) / 2, ang, rnd, tap,
            *rgb, alpha, *tex, 1.0, shade]


def bar(p: tuple[float, float], q: tuple[float, float], width: float, rgb: RGB,
        **kw: Any) -> list[float]:
    """A rotated bar from point p to point q (legs, lamp arms, runners). Its local y axis runs
    from p to q, so ``tap`` < 0 makes it narrower at q (tapered legs)."""
    dx, dy = q[0] - p[0], q[1] - p[1]
    half = math.hypot(dx, dy) / 2 + width / 2
    cx, cy = (p[0] + q[0]) / 2, (p[1] + q[1]) / 2
    return shape(cx - width / 2, cy - half, cx + width / 2, cy + half, rgb,
                 ang=math.atan2(-dx, dy), **kw)


def scale_rgb(rgb: RGB, f: float) -> RGB:
    return tuple(min(max(c * f, 0.0), 1.0) for c in rgb)  # type: ignore[return-value]


def mix_rgb(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(x * (1 - t) + y * t for x, y in zip(a, b))  # type: ignore[return-value]


def jitter_rgb(g: np.random.Generator, rgb: RGB, sd: float = 0.04) -> RGB:
    return tuple(np.clip(np.asarray(rgb) + g.normal(0, sd, 3), 0.02, 0.98).tolist())


