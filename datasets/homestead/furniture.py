"""Furniture: one look per product and one drawer per coarse category.

Why its own module: the shapes that tell 36 leaf categories and 6 styles apart are most of the
generator's code, and they change independently of rooms or rendering. A ``Look`` holds what is
style-specific about a product (colours jittered per product, so identity is visible, not only
style); a drawer (``DRAWERS``) turns a leaf, an aspect and a look into primitive rows in product
units (height 1, y down, floor at 1); ``place`` scales them into a room.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .nuisance import recolour
from .shapes import CX, CY, HH, HW, TSC, Tex, bar, jitter_rgb, scale_rgb, shape, texture
from .vocabulary import LEAVES, RGB, STYLE_SPECS, pick


@dataclass(frozen=True)
class Look:
    """Everything style-specific about one product; colours are jittered per product so that
    the identity is visible, not only the style."""

    body: RGB
    wood: RGB
    accent: RGB
    body_tex: Tex
    wood_tex: Tex
    accent_tex: Tex
    leg: str
    trim: str
    leg_h: float
    rnd: float
    shade: float
    painted: bool  # cabinets: painted in the body colour rather than bare wood


def make_look(style: str, g: np.random.Generator) -> Look:
    s = STYLE_SPECS[style]
    return Look(
        body=jitter_rgb(g, pick(g, s.body)), wood=jitter_rgb(g, pick(g, s.wood), 0.03),
        accent=jitter_rgb(g, pick(g, s.accent)), body_tex=texture(g, pick(g, s.body_tex)),
        wood_tex=texture(g, s.wood_tex), accent_tex=texture(g, pick(g, s.body_tex)),
        leg=s.leg, trim=s.trim, leg_h=s.leg_h * g.uniform(0.85, 1.15),
        rnd=float(np.clip(s.rnd + g.normal(0, 0.05), 0, 1)), shade=s.shade,
        painted=bool(g.random() < 0.5))


def _legs(lk: Look, xs: list[float], y0: float, y1: float, scale: float = 1.0) -> list[list]:
    """Legs in the style's own kind: the detail that tells styles apart at a glance."""
    if y1 - y0 < 0.01:
        return []
    out: list[list] = []
    mid = (min(xs) + max(xs)) / 2
    for x in xs:
        side = -1.0 if x < mid else 1.0
        if lk.leg == "tapered":
            out.append(bar((x, y0), (x + side * 0.05 * scale, y1), 0.045 * scale, lk.wood,
                           tap=-0.5, tex=lk.wood_tex))
        elif lk.leg == "hairpin":
            out.append(bar((x - 0.035 * scale, y0), (x, y1), 0.014 * scale, (0.1, 0.1, 0.1)))
            out.append(bar((x + 0.035 * scale, y0), (x, y1), 0.014 * scale, (0.1, 0.1, 0.1)))
        elif lk.leg == "turned":
            out.append(bar((x, y0), (x + side * 0.025 * scale, y1), 0.035 * scale, lk.wood,
                           tex=lk.wood_tex))
            yb = y0 + 0.4 * (y1 - y0)
            out.append(shape(x - 0.035 * scale, yb - 0.03, x + 0.035 * scale, yb + 0.03,
                             scale_rgb(lk.wood, 0.85), rnd=1.0))
        elif lk.leg == "chrome":
            out.append(shape(x - 0.01 * scale, y0, x + 0.01 * scale, y1, (0.78, 0.79, 0.83),
                             shade=0.6))
        elif lk.leg == "chunky":
            out.append(shape(x - 0.04 * scale, y0, x + 0.04 * scale, y1, scale_rgb(lk.wood, 0.8),
                             tex=lk.wood_tex))
        else:  # cone: short rattan legs, wide at the top
            out.append(shape(x - 0.035 * scale, y0, x + 0.035 * scale, y1, lk.wood,
                             tap=-0.6, tex=lk.wood_tex))
    return out


def _trim(lk: Look, x0: float, x1: float, y: float) -> list[list]:
    """A style detail along a horizontal edge: rivets, piping, a line, a band or a fringe."""
    if lk.trim == "rivets":
        return [shape(x - 0.012, y - 0.025, x + 0.012, y - 0.001, (0.15, 0.15, 0.15))
                for x in np.linspace(x0 + 0.05, x1 - 0.05, 5)]
    if lk.trim == "piping":
        return [shape(x0, y - 0.012, x1, y + 0.012, lk.accent, rnd=1.0)]
    if lk.trim == "line":
        return [shape(x0, y - 0.008, x1, y + 0.008, (0.78, 0.79, 0.83), shade=0.5)]
    if lk.trim == "band":
        return [shape(x0, y - 0.03, x1, y + 0.01, scale_rgb(lk.wood, 0.85), tex=lk.wood_tex)]
    if lk.trim == "fringe":  # strands as a sharp stripe texture: one shape, not dozens
        strands = (0.45, 25.0, 0, 0, 0, 0, 0, 0, 0, 1, 4)
        return [shape(x0 + 0.02, y, x1 - 0.02, y + 0.07, lk.accent, strands)]
    return []


def _knobs(lk: Look, points: list[tuple[float, float]]) -> list[list]:
    colour = (0.8, 0.7, 0.35) if lk.leg in ("turned", "cone") else (0.15, 0.15, 0.15)
    return [shape(x - 0.02, y - 0.02, x + 0.02, y + 0.02, colour, rnd=1.0) for x, y in points]


def _sofa(leaf: str, a: float, lk: Look, g: np.random.Generator) -> list[list]:
    """Sofas differ by width, arms, back height and cushions."""
    legh = 0.0 if leaf == "futon" else lk.leg_h
    floor = 1 - legh
    seat = {"futon": 0.6, "chesterfield": 0.5}.get(leaf, 0.55) + g.uniform(-0.03, 0.03)
    top = {"chesterfield": 0.2, "futon": 0.22, "chaise_longue": 0.05}.get(leaf, 0.0)
    arm = (0.2 if leaf == "chesterfield" else 0.14) * g.uniform(0.9, 1.1)
    arm_top = top + 0.05 if leaf == "chesterfield" else 0.3 + g.uniform(-0.04, 0.04)
    dark, light = scale_rgb(lk.body, 0.88), scale_rgb(lk.body, 1.06)
    ps = _legs(lk, [0.1 * a, 0.9 * a] + ([a / 2] if leaf == "sectional" else []), floor, 1.0)
    back_x1 = 0.5 * a if leaf == "chaise_longue" else a - arm * 0.5
    ps.append(shape(arm * 0.5, top, back_x1, seat + 0.05, dark, lk.body_tex, rnd=lk.rnd * 0.6))
    ps.append(shape(0, seat + 0.03, a, floor, lk.body, lk.body_tex, rnd=lk.rnd * 0.25))
    n = dict(loveseat=2, three_seater=3, chesterfield=0, chaise_longue=1, sectional=4, futon=1)[leaf]
    xs = np.linspace(arm, a - (0.02 if leaf == "chaise_longue" else arm), n + 1)
    for i in range(n):
        ps.append(shape(xs[i] + 0.01, seat - 0.08, xs[i + 1] - 0.01, seat + 0.1, light,
                        lk.body_tex, rnd=lk.rnd * 0.8))
        if leaf in ("three_seater", "loveseat", "sectional"):
            ps.append(shape(xs[i] + 0.03, top + 0.08, xs[i + 1] - 0.03, seat - 0.06, light,
                            lk.body_tex, rnd=lk.rnd))
    if leaf == "chesterfield":
        for x in np.linspace(0.3 * a, 0.7 * a, 5):
            for y in (top + 0.1, top + 0.2):
                ps.append(shape(x - 0.015, y - 0.015, x + 0.015, y + 0.015, scale_rgb(lk.body, 0.6),
                                rnd=1.0))
    if leaf != "futon":
        arms = [0.0] if leaf == "chaise_longue" else [0.0, a - arm]
        for x in arms:
            ps.append(shape(x, arm_top, x + arm, floor, dark, lk.body_tex, rnd=lk.rnd))
            if leaf == "chesterfield":
                ps.append(shape(x - 0.03, arm_top - 0.06, x + arm + 0.03, arm_top + 0.12, dark,
                                lk.body_tex, rnd=1.0))
    if leaf == "sectional":
        ps.append(shape(0.62 * a, seat + 0.12, a, 1 - legh * 0.3, scale_rgb(lk.body, 0.8),
                        lk.body_tex, rnd=lk.rnd * 0.3))
    if g.random() < 0.6:
        x = g.uniform(arm + 0.05, a - arm - 0.3)
        ps.append(shape(x, seat - 0.3, x + 0.25, seat - 0.04, lk.accent, lk.accent_tex,
                        rnd=0.6, ang=g.uniform(-0.2, 0.2)))
    return ps + _trim(lk, 0.0, a, floor)


def _chair(leaf: str, a: float, lk: Look, g: np.random.Generator) -> list[list]:
    """Chairs differ by back (none, slats, tall, upholstered), arms and base."""
    ps: list[list] = []
    frame = scale_rgb(lk.wood, 0.9)
    if leaf == "dining_chair":
        seat = 0.55 + g.uniform(-0.03, 0.03)
        ps += _legs(lk, [0.1 * a, 0.9 * a], seat + 0.04, 1.0, 0.8)
        ps += [shape(0.05 * a, 0, 0.13 * a, seat, frame, lk.wood_tex),
               shape(0.87 * a, 0, 0.95 * a, seat, frame, lk.wood_tex),
               shape(0.05 * a, 0.0, 0.95 * a, 0.14, lk.body, lk.body_tex, rnd=lk.rnd * 0.5)]
        ps += [shape(x - 0.025, 0.14, x + 0.025, seat, frame) for x in (0.38 * a, 0.62 * a)]
        ps.append(shape(0, seat - 0.05, a, seat + 0.05, lk.body, lk.body_tex, rnd=lk.rnd * 0.4))
        ps += _trim(lk, 0, a, seat + 0.05)
    elif leaf == "armchair":
        floor = 1 - lk.leg_h
        ps += _legs(lk, [0.12 * a, 0.88 * a], floor, 1.0)
        ps.append(shape(0.08 * a, 0.0, 0.92 * a, 0.6, scale_rgb(lk.body, 0.9), lk.body_tex,
                        rnd=min(1.0, lk.rnd + 0.2)))
        ps.append(shape(0, 0.55, a, floor, lk.body, lk.body_tex, rnd=lk.rnd * 0.3))
        ps.append(shape(0.15 * a, 0.47, 0.85 * a, 0.62, scale_rgb(lk.body, 1.06), lk.body_tex,
                        rnd=lk.rnd))
        ps += [shape(x, 0.32, x + 0.18 * a, floor, scale_rgb(lk.body, 0.85), lk.body_tex,
                     rnd=lk.rnd)
               for x in (0.0, 0.82 * a)]
        ps += _trim(lk, 0, a, floor)
    elif leaf in ("stool", "bar_stool"):
        top = 0.12 if leaf == "stool" else 0.08
        ps += _legs(lk, [0.15 * a, 0.85 * a], top, 1.0, 0.9)
        if leaf == "stool":
            ps.append(shape(0.46 * a, top, 0.54 * a, 1.0, frame, lk.wood_tex))
        ps.append(shape(0.1 * a, 0.68, 0.9 * a, 0.71, frame))
        ps.append(shape(0, 0, a, top, lk.body, lk.body_tex, rnd=min(1.0, lk.rnd + 0.4)))
        ps += _trim(lk, 0.1 * a, 0.9 * a, top)
    elif leaf == "office_chair":
        dark = (0.15, 0.15, 0.16)
        ps += [shape(0.46 * a, 0.38, 0.54 * a, 0.55, dark),
               shape(0.15 * a, 0, 0.85 * a, 0.42, lk.body, lk.body_tex, rnd=min(1, lk.rnd + .3)),
               shape(0.05 * a, 0.5, 0.95 * a, 0.6, lk.body, lk.body_tex, rnd=0.5),
               shape(0.46 * a, 0.6, 0.54 * a, 0.86, (0.6, 0.6, 0.62), shade=0.4),
               shape(0.05 * a, 0.85, 0.95 * a, 0.9, frame)]
        ps += [shape(x - 0.04, 0.9, x + 0.04, 0.98, dark, rnd=1) for x in (.1 * a, .5 * a, .9 * a)]
    else:  # rocking_chair
        ps += [shape(0.1 * a, 0, 0.9 * a, 0.5, frame, texture(g, "panel"), rnd=lk.rnd * 0.5),
               shape(0, 0.48, a, 0.57, lk.body, lk.body_tex, rnd=lk.rnd * 0.4),
               shape(0.08 * a, 0.57, 0.14 * a, 0.9, frame),
               shape(0.86 * a, 0.57, 0.92 * a, 0.9, frame),
               bar((-0.1 * a, 0.85), (0.5 * a, 0.93), 0.05, frame),
               bar((0.5 * a, 0.93), (1.1 * a, 0.85), 0.05, frame)]
        ps += _trim(lk, 0, a, 0.57)
    return ps


def _table(leaf: str, a: float, lk: Look, g: np.random.Generator) -> list[list]:
    """Tables differ by proportions, top shape, shelves, drawers and base."""
    top = lk.body if lk.painted and lk.leg == "chrome" else lk.wood
    thick = dict(coffee_table=0.15, side_table=0.12).get(leaf, 0.07) * g.uniform(0.85, 1.15)
    ps: list[list] = []
    if leaf == "round_table":
        ps += [shape(0.44 * a, thick, 0.56 * a, 0.92, scale_rgb(top, 0.85), lk.wood_tex),
               shape(0.2 * a, 0.9, 0.8 * a, 1.0, scale_rgb(top, 0.8), rnd=1.0),
               shape(0, 0, a, thick, top, lk.wood_tex, rnd=1.0, shade=lk.shade)]
        return ps
    if leaf == "desk":
        ps += _legs(lk, [0.06 * a], thick, 1.0)
        ps.append(shape(0.6 * a, thick, 0.98 * a, 1.0, lk.body if lk.painted else top,
                        lk.wood_tex))
        ps += [shape(0.62 * a, y, 0.96 * a, y + 0.012, (0.2, 0.2, 0.2)) for y in (0.4, 0.7)]
        ps += _knobs(lk, [(0.79 * a, y) for y in (0.25, 0.55, 0.85)])
    else:
        ps += _legs(lk, [0.07 * a, 0.93 * a], thick, 1.0)
    if leaf in ("coffee_table", "console_table"):
        y = 0.72 if leaf == "coffee_table" else 0.8
        ps.append(shape(0.06 * a, y, 0.94 * a, y + 0.06, scale_rgb(top, 0.9), lk.wood_tex))
    if leaf == "side_table":
        ps.append(shape(0.06 * a, thick, 0.94 * a, 0.45, lk.body if lk.painted else top,
                        lk.wood_tex))
        ps += _knobs(lk, [(0.5 * a, 0.3)])
    if leaf == "dining_table":
        ps.append(shape(0.05 * a, thick, 0.95 * a, thick + 0.08, scale_rgb(top, 0.85), lk.wood_tex))
    ps.append(shape(0, 0, a, thick, top, lk.wood_tex, rnd=lk.rnd * 0.3, shade=lk.shade))
    return ps + _trim(lk, 0.05 * a, 0.95 * a, thick + (0.08 if leaf == "dining_table" else 0))


def _bed(leaf: str, a: float, lk: Look, g: np.random.Generator) -> list[list]:
    """Beds differ by head/foot boards, tiers, posts and bars."""
    frame, linen = lk.wood, (0.95, 0.95, 0.93)
    legh = 0.0 if leaf == "platform_bed" else lk.leg_h * 0.6
    floor = 1 - legh
    ps = _legs(lk, [0.04 * a, 0.96 * a], floor, 1.0, 0.8)
    if leaf == "bunk_bed":
        ps += [shape(0, 0, 0.05 * a, 1, frame, lk.wood_tex),
               shape(0.95 * a, 0, a, 1, frame, lk.wood_tex)]
        for y in (0.22, 0.7):
            ps += [shape(0.05 * a, y, 0.95 * a, y + 0.08, linen, rnd=0.3),
                   shape(0.3 * a, y - 0.02, 0.95 * a, y + 0.09, lk.body, lk.body_tex, rnd=0.3),
                   shape(0.05 * a, y + 0.08, 0.95 * a, y + 0.13, frame, lk.wood_tex),
                   shape(0.07 * a, y - 0.06, 0.25 * a, y + 0.02, lk.accent, rnd=0.8)]
        ps += [shape(0.8 * a, y, 0.9 * a, y + 0.015, frame) for y in (0.45, 0.55, 0.65)]
        return ps
    if leaf == "crib":
        ps += [shape(0.03 * a, 0.55, 0.97 * a, 0.78, linen),
               shape(0, 0.1, 0.05 * a, floor, frame), shape(0.95 * a, 0.1, a, floor, frame),
               shape(0, 0.12, a, 0.18, frame, lk.wood_tex, rnd=0.5),
               shape(0, 0.78, a, 0.84, frame, lk.wood_tex)]
        ps += [shape(x - 0.012, 0.18, x + 0.012, 0.78, frame) for x in np.linspace(.12, .88, 7) * a]
        return ps
    head_top = dict(double_bed=0.0, canopy_bed=0.25, platform_bed=0.2).get(leaf, 0.1)
    mat_top = dict(double_bed=0.42, canopy_bed=0.6, platform_bed=0.42).get(leaf, 0.45)
    base_top = mat_top + 0.2
    if leaf == "canopy_bed":
        ps += [shape(0, 0, 0.04 * a, floor, frame, lk.wood_tex),
               shape(0.96 * a, 0, a, floor, frame, lk.wood_tex),
               shape(0, 0, a, 0.04, frame, lk.wood_tex),
               shape(0.04 * a, 0.04, 0.25 * a, 0.65, lk.accent, texture(g, "folds"), alpha=0.55),
               shape(0.75 * a, 0.04, 0.96 * a, 0.65, lk.accent, texture(g, "folds"), alpha=0.55)]
    board = lk.body if leaf == "double_bed" else frame
    ps.append(shape(0, head_top, 0.07 * a, floor, board, lk.body_tex, rnd=lk.rnd * 0.5))
    ps.append(shape(0.05 * a, mat_top, 0.96 * a, base_top, linen, rnd=0.3))
    ps.append(shape(0.35 * a, mat_top - 0.03, 0.96 * a, base_top - 0.02, lk.body, lk.body_tex,
                    rnd=0.3))
    ps.append(shape(0.04 * a, base_top, a, floor if legh == 0 else base_top + 0.14, frame,
                    lk.wood_tex, rnd=lk.rnd * 0.2))
    for i in range(2 if leaf == "double_bed" else 1):
        ps.append(shape(0.08 * a + i * 0.04, mat_top - 0.12 + i * 0.06, 0.3 * a + i * 0.04,
                        mat_top + 0.02 + i * 0.06, lk.accent if i else linen, rnd=0.8))
    if leaf in ("single_bed", "double_bed"):
        ps.append(shape(0.93 * a, mat_top + 0.05, a, floor, frame, lk.wood_tex,
                        rnd=lk.rnd * 0.4))
    return ps + _trim(lk, 0.05 * a, 0.95 * a, base_top + 0.14 if legh else 0.9)


def _lamp(leaf: str, a: float, lk: Look, g: np.random.Generator) -> list[list]:
    """Lamps differ by pole, arm, base and where the shade sits."""
    metal = lk.wood if lk.leg in ("tapered", "cone", "chunky", "turned") else (0.15, 0.15, 0.16)
    if lk.leg == "chrome":
        metal = (0.78, 0.79, 0.83)
    shade_rgb, glow = lk.body, (1.0, 0.93, 0.7)
    tap = 0.5 if lk.rnd > 0.3 else 0.25
    if leaf == "floor_lamp":
        return [shape(0.15 * a, 0.94, 0.85 * a, 1.0, metal, rnd=1.0),
                shape(0.47 * a, 0.25, 0.53 * a, 0.96, metal, shade=0.3),
                shape(0.05 * a, 0.02, 0.95 * a, 0.28, shade_rgb, lk.body_tex, tap=tap)]
    if leaf == "table_lamp":
        return [shape(0.25 * a, 0.5, 0.75 * a, 1.0, lk.accent, lk.accent_tex, rnd=0.9),
                shape(0.46 * a, 0.4, 0.54 * a, 0.52, metal),
                shape(0.05 * a, 0.05, 0.95 * a, 0.45, shade_rgb, lk.body_tex, tap=tap)]
    if leaf == "arc_lamp":
        pts = [(0.15 * a + 0.65 * a * (1 - math.cos(t)), 0.93 - 0.78 * math.sin(t))
               for t in np.linspace(0, math.pi / 2, 6)]
        ps = [shape(0.0, 0.92, 0.3 * a, 1.0, metal, rnd=0.6)]
        ps += [bar(p, q, 0.025, metal) for p, q in zip(pts[:-1], pts[1:])]
        return ps + [shape(0.65 * a, 0.14, 0.98 * a, 0.34, shade_rgb, lk.body_tex, rnd=0.6,
                           tap=0.6)]
    if leaf == "pendant_lamp":
        return [shape(0.49 * a, 0.0, 0.51 * a, 0.55, (0.1, 0.1, 0.1)),
                shape(0.4 * a, 0.84, 0.6 * a, 0.99, glow, rnd=1.0),
                shape(0.04 * a, 0.5, 0.96 * a, 0.9, shade_rgb, lk.body_tex, rnd=lk.rnd * 0.6,
                      tap=0.8, shade=lk.shade)]
    if leaf == "desk_lamp":
        return [shape(0.05 * a, 0.92, 0.55 * a, 1.0, metal, rnd=0.5),
                bar((0.3 * a, 0.95), (0.55 * a, 0.45), 0.04, metal),
                bar((0.55 * a, 0.45), (0.72 * a, 0.15), 0.04, metal),
                shape(0.58 * a, 0.08, 0.98 * a, 0.36, shade_rgb, lk.body_tex, ang=0.5, tap=0.5)]
    return [shape(0.3 * a, 0.0, 0.7 * a, 0.12, metal, rnd=1.0),  # lantern
            shape(0.1 * a, 0.1, 0.9 * a, 0.2, metal, tap=0.5),
            shape(0.15 * a, 0.2, 0.85 * a, 0.9, glow),
            shape(0.46 * a, 0.2, 0.54 * a, 0.9, metal),
            shape(0.12 * a, 0.2, 0.2 * a, 0.9, metal), shape(0.8 * a, 0.2, 0.88 * a, 0.9, metal),
            shape(0.05 * a, 0.9, 0.95 * a, 1.0, metal, lk.wood_tex)]


def _cabinet(leaf: str, a: float, lk: Look, g: np.random.Generator) -> list[list]:
    """Cabinets differ by proportions and how their front is divided."""
    body = lk.body if lk.painted else lk.wood
    tex = lk.body_tex if lk.painted else lk.wood_tex
    line = scale_rgb(body, 0.6)
    legh = lk.leg_h * (0.5 if leaf in ("wardrobe", "bookcase") else 0.8)
    floor = 1 - legh
    ps = _legs(lk, [0.06 * a, 0.94 * a], floor, 1.0, 0.8)
    ps.append(shape(0, 0.0, a, floor, body, tex, rnd=lk.rnd * 0.08, shade=lk.shade * 0.5))
    if leaf == "bookcase":
        ps.append(shape(0.06 * a, 0.04, 0.94 * a, floor - 0.03, scale_rgb(body, 0.45)))
        for y in np.linspace(0.05, floor - 0.25, 4):
            books = jitter_rgb(g, pick(g, ((0.7, 0.2, 0.2), (0.2, 0.35, 0.6), (0.85, 0.75, .5),
                                           (0.3, 0.5, 0.3))), 0.1)
            ps.append(shape(0.08 * a, y + 0.04, g.uniform(0.6, 0.92) * a, y + 0.2, books,
                            texture(g, "books")))
            ps.append(shape(0.06 * a, y + 0.2, 0.94 * a, y + 0.23, body, tex))
        return ps + _trim(lk, 0, a, floor)
    if leaf == "tv_stand":
        xs = np.linspace(0.03 * a, 0.97 * a, 4)
        ps += [shape(x0 + 0.03, 0.15, x1 - 0.03, floor - 0.12, scale_rgb(body, 0.4))
               for x0, x1 in zip(xs[:-1], xs[1:])]
        return ps + _trim(lk, 0, a, floor)
    cols, rows = dict(wardrobe=(2, 1), dresser=(2, 3), sideboard=(3, 1), nightstand=(1, 2))[leaf]
    for x in np.linspace(0, a, cols + 1)[1:-1]:
        ps.append(shape(x - 0.008, 0.05, x + 0.008, floor - 0.04, line))
    for y in np.linspace(0, floor, rows + 1)[1:-1]:
        ps.append(shape(0.03 * a, y - 0.008, 0.97 * a, y + 0.008, line))
    knobs = [((i + 0.5) / cols * a + (0.1 if leaf == "wardrobe" and i == 0 else 0)
              - (0.1 if leaf == "wardrobe" and i == 1 else 0),
              (j + 0.5) / rows * floor) for i in range(cols) for j in range(rows)]
    ps += _knobs(lk, knobs)
    ps.append(shape(-0.02 * a, 0, 1.02 * a, 0.04, scale_rgb(body, 0.85), tex))
    return ps + _trim(lk, 0, a, floor)


DRAWERS = dict(sofa=_sofa, chair=_chair, table=_table, bed=_bed, lamp=_lamp, cabinet=_cabinet)


@dataclass
class Product:
    leaf: str
    coarse: str
    style: str
    aspect: float
    prims: np.ndarray  # [k, NCOL] in product units (height 1, width aspect)


def make_product(leaf: str, style: str, g: np.random.Generator,
                 way: dict[str, Any] | None = None,
                 material: dict[str, Any] | None = None) -> Product:
    """A product of a leaf and style; ``way`` is a colourway from the palette shared by all
    styles (``nuisance.colourway``) and ``material`` its style's signature material
    (``materials.draw``), both applied after every draw from ``g`` so that they change the
    colours and the upholstery's texture only."""
    coarse, aspect, _ = LEAVES[leaf]
    aspect *= g.uniform(0.92, 1.08)
    look = recolour(make_look(style, g), way)
    if material is not None:
        look = replace(look, body_tex=material["product"])
    prims = np.asarray(DRAWERS[coarse](leaf, aspect, look, g), dtype=np.float32)
    return Product(leaf, coarse, style, aspect, prims)


def place(prims: np.ndarray, x0: float, y0: float, height: float) -> np.ndarray:
    """Product units -> scene units: uniform scale (keeps rotations and roundness) and shift."""
    out = prims.copy()
    out[:, [CX, HW, HH, TSC]] *= height
    out[:, CX] += x0
    out[:, CY] = y0 + prims[:, CY] * height
    return out


