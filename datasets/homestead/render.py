"""The batched renderer: shots (primitive rows, a viewport, light) to uint8 images.

Why its own module: this is the one hot loop of the generator. Every shape is evaluated as a
signed distance for a whole batch of images at once, layer by layer, so the cost is a few dozen
array operations per layer instead of per-pixel Python; chunks run on a few threads (numpy
releases the GIL) with their own noise seeds, so the pixels never depend on the thread count.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .shapes import (
    A1,
    A2,
    ALPHA,
    AN,
    ANG,
    CB,
    CR,
    CX,
    CY,
    HH,
    HW,
    K1X,
    K1Y,
    K2X,
    K2Y,
    NCOL,
    NF,
    NOISE_BITS,
    PH1,
    RND,
    SHADE,
    SHARP,
    TAP,
    TSC,
    WOB,
)


@dataclass
class Shot:
    """One image to draw: primitives (scene units), a square viewport and camera/light effects."""

    prims: np.ndarray            # [k, NCOL]
    view: tuple[float, float, float]  # x0, y0, side
    gain: tuple[float, float, float]  # per-channel light colour and brightness
    contrast: float
    noise: float


def _noise_table(seed: int) -> np.ndarray:
    """A fixed 64 x 64 table of material noise (fabric, concrete, carpet)."""
    side = 1 << NOISE_BITS
    return np.random.default_rng(seed).uniform(-1, 1, side * side).astype(np.float32)


def _paint(img: np.ndarray, p: np.ndarray, X: np.ndarray, Y: np.ndarray, pix: np.ndarray,
           noise: np.ndarray) -> None:
    """Composite one primitive per image onto ``img`` [B, S, S, 3] in place: a signed-distance
    rounded box, anti-aliased over one pixel, coloured by its material texture and shading."""

    def col(k: int) -> np.ndarray:
        return p[:, k, None, None]

    lx, ly = X - col(CX), Y - col(CY)
    if np.any(p[:, ANG]):
        cos, sin = np.cos(col(ANG)), np.sin(col(ANG))
        lx, ly = lx * cos + ly * sin, ly * cos - lx * sin
    hw, hh = col(HW), col(HH)
    if np.any(p[:, TAP]):
        hw = np.maximum(hw * (1 + col(TAP) * np.clip(ly / hh, -1, 1)), 1e-4)
    r = col(RND) * np.minimum(hw, hh)
    qx, qy = np.abs(lx) - hw + r, np.abs(ly) - hh + r
    dist = (np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
            + np.minimum(np.maximum(qx, qy), 0) - r)
    alpha = np.clip(0.5 - dist / pix, 0, 1) * col(ALPHA)
    m = np.ones_like(alpha)
    if np.any(p[:, [A1, A2, AN]]):
        tu, tv = lx / col(TSC), ly / col(TSC)
        two_pi = np.float32(2 * math.pi)
        if np.any(p[:, A1]):
            arg = two_pi * (col(K1X) * tu + col(K1Y) * tv) + col(PH1)
            if np.any(p[:, WOB]):
                arg = arg + col(WOB) * np.sin(two_pi * 0.15 * (col(K1Y) * tu - col(K1X) * tv))
            m += col(A1) * np.clip(np.sin(arg) * col(SHARP), -1, 1)
        if np.any(p[:, A2]):
            arg = two_pi * (col(K2X) * tu + col(K2Y) * tv)
            m += col(A2) * np.clip(np.sin(arg) * col(SHARP), -1, 1)
        if np.any(p[:, AN]):
            mask = (1 << NOISE_BITS) - 1
            iu = np.floor(tu * col(NF)).astype(np.int64) & mask
            iv = np.floor(tv * col(NF)).astype(np.int64) & mask
            m += col(AN) * noise[(iv << NOISE_BITS) | iu]
    if np.any(p[:, SHADE]):
        m *= 1 - 0.5 * col(SHADE) * np.clip(ly / hh, -1, 1)
    colour = p[:, None, None, CR:CB + 1] * m[..., None]
    img += alpha[..., None] * (colour - img)


def _render_chunk(shots: list[Shot], size: int, noise: np.ndarray,
                  seed: np.random.SeedSequence) -> np.ndarray:
    """Draw a batch of shots layer by layer: layer l is the l-th primitive of every shot."""
    n, layers = len(shots), max(len(s.prims) for s in shots)
    prims = np.zeros((n, layers, NCOL), dtype=np.float32)
    for i, s in enumerate(shots):
        prims[i, :len(s.prims)] = s.prims
    view = np.asarray([s.view for s in shots], dtype=np.float32)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    X = (view[:, 0, None] + grid * view[:, 2, None])[:, None, :]
    Y = (view[:, 1, None] + grid * view[:, 2, None])[:, :, None]
    pix = (view[:, 2] / size)[:, None, None]
    img = np.zeros((n, size, size, 3), dtype=np.float32)
    for layer in range(layers):
        p = prims[:, layer]
        active = np.flatnonzero(p[:, ALPHA] > 0)
        if len(active) == n:
            _paint(img, p, X, Y, pix, noise)
        elif len(active):
            sub = img[active]
            _paint(sub, p[active], X[active], Y[active], pix[active], noise)
            img[active] = sub
    gain = np.asarray([s.gain for s in shots], dtype=np.float32)[:, None, None, :]
    contrast = np.asarray([s.contrast for s in shots], dtype=np.float32)[:, None, None, None]
    sigma = np.asarray([s.noise for s in shots], dtype=np.float32)[:, None, None, None]
    img = (img * gain - 0.5) * contrast + 0.5
    img += sigma * np.random.default_rng(seed).standard_normal(img.shape, dtype=np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def render(shots: list[Shot], size: int, seed: int) -> np.ndarray:
    """Render all shots in chunks of about 256k pixels (shots with similar primitive counts
    together), on a few threads (numpy releases the GIL in array arithmetic). Chunks have their
    own noise seeds, so the result does not depend on the thread count or order."""
    chunk = max(1, (1 << 18) // (size * size))
    order = np.argsort([len(s.prims) for s in shots], kind="stable")  # little padding per chunk
    starts = list(range(0, len(shots), chunk))
    seeds = np.random.SeedSequence([seed, 7]).spawn(len(starts))
    noise = _noise_table(seed)
    out = np.empty((len(shots), size, size, 3), dtype=np.uint8)

    def work(i: int) -> None:
        rows = order[starts[i]:starts[i] + chunk]
        out[rows] = _render_chunk([shots[r] for r in rows], size, noise, seeds[i])

    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, range(len(starts))))
    return out


