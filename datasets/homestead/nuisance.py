"""Nuisance factors: what makes a real catalogue hard, and what a good embedding should ignore.

Why its own module: in homestead-1.1 a room's style set its wall colour and pattern from a small
palette and a product's colours came from its style's palette, so the mean colour of an image
gave its style away and raw pixels beat every learned extractor. Real catalogues sell one design
in several colourways, shoot it on many backgrounds, under other light, from other angles and
crops, with props in front, through a camera's noise and a JPEG encoder. Each of those is one
factor here, one integer dataset option (``FACTORS``, defaults in ``DEFAULTS``), applied on top
of what homestead-1.1 draws:

- ``colourways`` (percent, default 80): the share of products whose body, accent and wood
  colours are a colourway drawn from ``PALETTE``/``WOODS``, shared by all styles, instead of
  their style's own palette. Style stays in what a style is: shapes, materials and textures,
  legs, trim, roundness, decor and how a room is furnished. The other products keep their
  style's colours, so colour is weakly tied to style, not a give-away.
- ``backgrounds`` (percent, default 85): the share of rooms whose wall colour, floor tone and
  decor accent are drawn across all styles (``WALLS``, ``FLOOR_TONES``, ``PALETTE``), and of
  product shots on a coloured backdrop with a floor instead of the plain light one. The wall
  pattern (brick, wallpaper, panels...) is a material, part of what a style is: it comes from
  any style in ``PATTERN_SHARE`` of those rooms and stays the style's own in the rest. Their
  walls and floors are drawn ``bold``: at a scale a 32-px image resolves. The sky behind
  windows and balconies varies (``SKIES``: day, overcast, dusk, evening, haze), and so does
  the kitchen's tiled wall.
- ``camera`` (percent strength, default 100): zoom (view side x 1 +- 0.25), offset (+-0.08 of
  the view) and tilt (+-6 degrees), at full strength, uniform; all shots, queries
  ``QUERY_CAMERA`` times as strongly (a user's photo is framed more loosely than a listing's).
- ``light`` (percent strength, default 100): brightness x 1 +- 0.3, contrast x 1 +- 0.15 and a
  colour cast of +-0.12 on the green-magenta axis, gain (1 - c/2, 1 + c, 1 - c/2). The cast is
  orthogonal to brightness (1, 1, 1) and nearly so to the covers' ``warmth`` (gain
  (1 + .14w, 1 + .02w, 1 - .14w), the red-blue axis): warmth stays the only thing that moves a
  cover's red against its blue, so the behaviour model's warmth latent keeps its meaning and
  the two are told apart by their axes (``nuisance_cast`` is recorded beside ``warmth``).
- ``clutter`` (most objects, default 2): 0 to ``clutter`` foreground objects (vases, book
  stacks, plants) in front of every cover, query and product shot, partly hiding furniture.
- ``noise`` (sensor noise, 1/1000 of full scale, default 15): Gaussian noise of
  ``noise/1000 * U(0.5, 1.5)`` on top of the renderer's own.
- ``jpeg`` (lowest quality, default 70; 0 = off): every image is JPEG-encoded and decoded at its
  rendered size with a quality drawn from ``jpeg`` .. 95 (PIL's encoder).
- ``mirror`` (percent, default 50): that share of every role's pictures (products, covers,
  queries) is mirrored left to right, each on its own draw, as a room is photographed from
  either side and a listing shows a sofa facing left or right. homestead-1.1's rooms put their
  fixtures on one side (a living room's window and a study's shelves on the left, wall art and
  the study's clock on the right), so an 8x8 pixel grid matched scenes by where things sit;
  mirrored, the objects still say the scene and the layout no longer does. A query and its
  catalogue shot are mirrored independently.
- ``height`` (percent strength, default 100): the camera height of a room photograph (covers
  only): the view moves up or down by up to ``HEIGHT`` of its side, uniform, so a room's
  horizon, its kitchen cabinets or its balcony railing sit higher or lower in the picture from
  one photo of a scene type to the next, as photographers shoot from a chair's height or a
  standing one. Scene types differ in horizon by at most 0.1 (``SCENE_HORIZON``): an 8x8
  grid matched scenes by where those bands fell; what is in the room still says the scene.
- ``materials`` (percent, default 90): not a nuisance but the style cue that takes colour's
  place, so it lives in ``materials.py``; it is listed here because it shares the options,
  the ``nuisance=0`` switch and the per-item streams: that share of products, covers and query
  scenes carry their style's signature material on the wall, the rug and the upholstery.

``nuisance=0`` (a dataset option, and the default: docs/homestead.md says why) sets every
factor not given explicitly to 0; ``nuisance=1`` gives each factor its default below. With
all factors at 0 the images, item table and logs are homestead-1.1's, byte for byte
(``tests/test_homestead_nuisance.py`` holds that world's digest). Every draw here comes from
its own stream per item and factor (``ItemDraws``), never from the streams homestead-1.1 draws
from, so switching a factor changes pixels and the ``nuisance_*`` latents only: labels, splits,
the other latents and the behaviour log stay as they were.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from .shapes import ANG, CB, CR, CX, CY, texture
from .vocabulary import RGB, STYLE_SPECS

# Appended, never reordered: a factor's position keys its random stream (``ItemDraws``).
FACTORS = ("colourways", "backgrounds", "camera", "light", "clutter", "noise", "jpeg",
           "materials", "mirror", "height")
DEFAULTS: dict[str, int] = dict(colourways=80, backgrounds=85, camera=100, light=100, clutter=2,
                                noise=15, jpeg=70, materials=90, mirror=50, height=100)
LIMITS: dict[str, tuple[int, int]] = dict(colourways=(0, 100), backgrounds=(0, 100),
                                          camera=(0, 100), light=(0, 100), clutter=(0, 5),
                                          noise=(0, 200), jpeg=(0, 95), materials=(0, 100),
                                          mirror=(0, 100), height=(0, 200))

ZOOM, OFFSET, TILT_DEG = 0.25, 0.08, 6.0            # camera at full strength
HEIGHT = 0.15           # a room photo's camera height: view moved up or down, share of its side
QUERY_CAMERA = 1.6      # a user's photo is framed more loosely than a listing photo
PATTERN_SHARE = 0.3     # of backdrops whose wall pattern comes from any style (else its own)
BRIGHTNESS, CONTRAST, CAST = 0.3, 0.15, 0.12        # light at full strength
JPEG_MAX = 95


def _unique(colours: list[RGB]) -> tuple[RGB, ...]:
    return tuple(dict.fromkeys(colours))


# Palettes shared by all styles: every style's own colours plus a few neutral and bold extras.
PALETTE: tuple[RGB, ...] = _unique(
    [c for s in STYLE_SPECS.values() for c in s.body + s.accent]
    + [(0.2, 0.3, 0.45), (0.75, 0.72, 0.3), (0.45, 0.2, 0.45), (0.3, 0.55, 0.7)])
WOODS: tuple[RGB, ...] = _unique([c for s in STYLE_SPECS.values() for c in s.wood])
WALLS: tuple[RGB, ...] = _unique(
    [c for s in STYLE_SPECS.values() for c in s.wall]
    + [(0.55, 0.65, 0.75), (0.75, 0.8, 0.68), (0.45, 0.5, 0.42), (0.85, 0.85, 0.6)])
WALL_TEXTURES: tuple[str, ...] = tuple(dict.fromkeys(t for s in STYLE_SPECS.values()
                                                     for t in s.wall_tex))
FLOOR_TONES: tuple[RGB, ...] = _unique([s.floor for s in STYLE_SPECS.values()])
# Day, overcast, dusk, evening and hazy skies behind windows and balconies.
SKIES: tuple[RGB, ...] = ((0.62, 0.8, 0.95), (0.8, 0.82, 0.85), (0.95, 0.72, 0.55),
                          (0.35, 0.4, 0.6), (0.85, 0.85, 0.7))
BOLD_FREQ, BOLD_GAIN = 1 / 6, 2.0  # room patterns at a scale a 32-px picture resolves


def bold(tex: tuple[float, ...]) -> tuple[float, ...]:
    """A room-sized pattern (wall, floor) at a scale the picture resolves: homestead-1.1 drew
    them at 3x the product frequencies, 14-42 cycles across the room, which a 32-px image only
    aliases into noise. Bold patterns (a sixth of that frequency, twice the contrast) make
    brick, wallpaper, panels or floorboards a visible material: style and scene in texture,
    where raw pixels averaged to 8x8 cannot read them, and colour no longer has to say it."""
    t = list(tex)
    for k in (1, 2, 6, 7):
        t[k] *= BOLD_FREQ
    t[0], t[5] = min(t[0] * BOLD_GAIN, 0.4), min(t[5] * BOLD_GAIN, 0.4)
    t[9] *= BOLD_FREQ * 2
    return tuple(t)

# Role codes for the per-item streams.
PRODUCT, COVER, QUERY = 0, 1, 2


def resolve(params: dict[str, int], given: set[str]) -> dict[str, int]:
    """The factors' strengths: ``nuisance=0`` zeroes every factor that was not given."""
    if params.get("nuisance", 1):
        return params
    return {**params, **{f: 0 for f in FACTORS if f not in given}}


@dataclass(frozen=True)
class Nuisance:
    """The strengths of every factor for one world, and the seed of their streams."""

    seed: int
    colourways: int = 0
    backgrounds: int = 0
    camera: int = 0
    light: int = 0
    clutter: int = 0
    noise: int = 0
    jpeg: int = 0
    materials: int = 0
    mirror: int = 0
    height: int = 0

    @classmethod
    def from_params(cls, params: dict[str, int]) -> Nuisance:
        return cls(seed=params["seed"], **{f: int(params.get(f, 0)) for f in FACTORS})

    def draws(self, role: int, index: int) -> ItemDraws:
        return ItemDraws(self.seed, role, index)


class ItemDraws:
    """One random stream per (item, factor): a factor's draws never depend on which other
    factors are on, and none of them touch the streams the rest of the world is drawn from."""

    def __init__(self, seed: int, role: int, index: int):
        self.key = (seed, 7_2026, role, index)

    def __call__(self, factor: str) -> np.random.Generator:
        return np.random.default_rng([*self.key, FACTORS.index(factor)])


def _jitter(g: np.random.Generator, rgb: RGB, sd: float) -> RGB:
    return tuple(np.clip(np.asarray(rgb) + g.normal(0, sd, 3), 0.02, 0.98).tolist())


# --- colourways ---------------------------------------------------------------------------

def colourway(share: int, g: np.random.Generator) -> dict[str, Any] | None:
    """A product's colourway from the shared palette, or None (its style's own colours)."""
    if g.random() * 100 >= share:
        return None
    body = int(g.integers(len(PALETTE)))
    return {"index": body, "body": _jitter(g, PALETTE[body], 0.03),
            "accent": _jitter(g, PALETTE[int(g.integers(len(PALETTE)))], 0.03),
            "wood": _jitter(g, WOODS[int(g.integers(len(WOODS)))], 0.03)}


def recolour(look: Any, way: dict[str, Any] | None) -> Any:
    """The look in the colourway (textures, legs, trim and shape untouched)."""
    if way is None:
        return look
    return replace(look, body=way["body"], accent=way["accent"], wood=way["wood"])


# --- backgrounds --------------------------------------------------------------------------

def room_backdrop(share: int, g: np.random.Generator) -> dict[str, Any] | None:
    """Wall colour and pattern, floor tone and decor accent drawn across all styles, or None."""
    if g.random() * 100 >= share:
        return None
    wall = int(g.integers(len(WALLS)))
    pattern = texture(g, WALL_TEXTURES[int(g.integers(len(WALL_TEXTURES)))], True)
    return {"index": wall, "wall": _jitter(g, WALLS[wall], 0.03),
            "wall_tex": pattern if g.random() < PATTERN_SHARE else None,
            "sky": _jitter(g, SKIES[int(g.integers(len(SKIES)))], 0.03),
            "tile": _jitter(g, WALLS[int(g.integers(len(WALLS)))], 0.03),
            "floor": _jitter(g, FLOOR_TONES[int(g.integers(len(FLOOR_TONES)))], 0.03),
            "accent": _jitter(g, PALETTE[int(g.integers(len(PALETTE)))], 0.05)}


# --- camera, light, clutter, sensor -------------------------------------------------------

def camera(strength: int, g: np.random.Generator, scale: float = 1.0
           ) -> tuple[float, float, float, float]:
    """(zoom, shift x, shift y, tilt in degrees) at ``strength`` percent (times ``scale``)."""
    s = strength / 100 * scale
    u = g.uniform(-1, 1, 4)
    return (float(1 + ZOOM * s * u[0]), float(OFFSET * s * u[1]), float(OFFSET * s * u[2]),
            float(TILT_DEG * s * u[3]))


def apply_camera(prims: np.ndarray, view: tuple[float, float, float],
                 cam: tuple[float, float, float, float]
                 ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Zoom about the view's centre, shift it, and tilt the scene about that centre (a rigid
    rotation: centres turn about the pivot and every shape's own angle grows by the tilt)."""
    zoom, dx, dy, tilt = cam
    x0, y0, side = view
    px, py = x0 + side / 2, y0 + side / 2
    new_side = side * zoom
    cx, cy = px + dx * side, py + dy * side
    out = prims
    if tilt:
        t = math.radians(tilt)
        cos, sin = math.cos(t), math.sin(t)
        out = prims.copy()
        rx, ry = prims[:, CX] - px, prims[:, CY] - py
        out[:, CX] = px + cos * rx - sin * ry
        out[:, CY] = py + sin * rx + cos * ry
        out[:, ANG] = prims[:, ANG] + t
    return out, (cx - new_side / 2, cy - new_side / 2, new_side)


def light(strength: int, g: np.random.Generator) -> tuple[float, float, float]:
    """(brightness, contrast factor, green-magenta cast) at ``strength`` percent."""
    s = strength / 100
    u = g.uniform(-1, 1, 3)
    return (float(1 + BRIGHTNESS * s * u[0]), float(1 + CONTRAST * s * u[1]),
            float(CAST * s * u[2]))


def lit(gain: tuple[float, float, float], brightness: float, cast: float
        ) -> tuple[float, float, float]:
    """The shot's gain under the extra light: brightness on all channels, the cast on green
    against red and blue together (orthogonal to brightness and to warmth's red-blue axis)."""
    axis = (1 - cast / 2, 1 + cast, 1 - cast / 2)
    return tuple(float(a * brightness * b) for a, b in zip(gain, axis))  # type: ignore


def clutter_count(most: int, g: np.random.Generator) -> int:
    return int(g.integers(0, most + 1)) if most else 0


def camera_height(strength: int, g: np.random.Generator) -> float:
    """How far a room photo's view moves down (negative: up), as a share of its side."""
    return float(HEIGHT * strength / 100 * g.uniform(-1, 1)) if strength else 0.0


def mirrored(share: int, g: np.random.Generator) -> int:
    """1 if the picture is mirrored left to right (``share`` percent of them), else 0."""
    return int(g.random() * 100 < share) if share else 0


def mirror(images: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Mirror left to right, in place, each image whose flag is 1 (before JPEG, as a camera
    would: the encoder's blocks then fall on the mirrored picture)."""
    rows = np.flatnonzero(flags > 0)
    images[rows] = images[rows][:, :, ::-1]
    return images


def sensor_sigma(noise: int, g: np.random.Generator) -> float:
    return float(noise / 1000 * g.uniform(0.5, 1.5)) if noise else 0.0


def jpeg_quality(lowest: int, g: np.random.Generator) -> int:
    return int(g.integers(lowest, JPEG_MAX + 1)) if lowest else 0


def compress(images: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """JPEG-encode and decode each image whose quality is > 0, at its rendered size, in place."""
    for i in np.flatnonzero(quality > 0):
        buffer = io.BytesIO()
        Image.fromarray(images[i]).save(buffer, format="JPEG", quality=int(quality[i]))
        buffer.seek(0)
        images[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return images


def recolour_rows(prims: np.ndarray, rgb: RGB) -> np.ndarray:
    """Rows with their colour replaced (backdrops built from the plain product-shot rows)."""
    out = prims.copy()
    out[:, CR:CB + 1] = rgb
    return out
