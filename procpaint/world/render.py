"""The default painter: a numpy rasteriser of :class:`State` s.

Each object is an axis-aligned shape of half-extent ``r`` (pixels) around a centre; coverage is
estimated by supersampling (``ss x ss`` samples per pixel) and composited over a flat background,
so edges are anti-aliased. Jitter (sub-cell position, size, colour) is drawn from
``(seed, object uid)``, so an object keeps its look while other objects come and go: the state
after step *i* renders as the image after step *i*.
"""

from __future__ import annotations

import random
from functools import cache

import numpy as np

from ..io import from_uint8
from .scene import BACKGROUND, GRID, PALETTE, SIZE_FRACTION, Placed, State

STAR = np.array([(np.sin(a) * rad, -np.cos(a) * rad)
                 for k in range(10) for a, rad in [(np.pi * k / 5, 1.0 if k % 2 == 0 else 0.45)]])
TRIANGLE = np.array([(0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)])


def _in_polygon(x: np.ndarray, y: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule, vectorised over points; poly (V, 2) in (x, y)."""
    inside = np.zeros(x.shape, dtype=bool)
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for a, b, c, d in zip(x0, y0, x1, y1):
        if b == d:
            continue
        crosses = (y >= min(b, d)) & (y < max(b, d))
        xi = a + (y - b) * (c - a) / (d - b)
        inside ^= crosses & (x < xi)
    return inside


def inside(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Membership of unit-frame points (object spans [-1, 1]^2, y down)."""
    if shape == "circle":
        return x * x + y * y <= 1.0
    if shape == "square":
        return (np.abs(x) <= 0.85) & (np.abs(y) <= 0.85)
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= 1.0
    if shape == "cross":
        ax, ay = np.abs(x), np.abs(y)
        return ((ax <= 0.34) & (ay <= 1.0)) | ((ay <= 0.34) & (ax <= 1.0))
    if shape == "triangle":
        return _in_polygon(x, y, TRIANGLE)
    if shape == "star":
        return _in_polygon(x, y, STAR)
    raise ValueError(f"unknown shape {shape!r}")


MASK_RES = 512


@cache
def unit_mask(shape: str) -> np.ndarray:
    """(MASK_RES + 1, MASK_RES + 1) bool membership on a fine grid over [-1, 1]^2, with a false
    border row/column that out-of-frame lookups are clipped onto."""
    t = (np.arange(MASK_RES) + 0.5) / MASK_RES * 2 - 1
    x, y = np.meshgrid(t, t)
    return np.pad(inside(shape, x, y), ((0, 1), (0, 1)))


@cache
def unit_stats(shape: str, n: int = 400) -> tuple[float, float, float]:
    """(area, centroid x, centroid y) of the unit shape; the detector inverts size and centre."""
    t = (np.arange(n) + 0.5) / n * 2 - 1
    x, y = np.meshgrid(t, t)
    m = inside(shape, x, y)
    return float(m.mean() * 4.0), float(x[m].mean()), float(y[m].mean())


@cache
def _offsets(ss: int) -> np.ndarray:
    return (np.arange(ss) + 0.5) / ss                                       # (ss,) sample offsets


@cache
def _pool(n: int, ss: int) -> np.ndarray:
    """(n, n*ss) 0/1 matrix summing each run of ``ss`` samples: box-filtering as two tiny matmuls
    (sums of <= ss*ss ones are exact in float32, so this equals a reshape-mean bit for bit)."""
    return np.kron(np.eye(n, dtype=np.float32), np.ones((1, ss), np.float32))


def mask_index(t: np.ndarray, c: float, r: float) -> np.ndarray:
    """Sample coordinates ``t`` (pixels) -> unit-mask indices for centre ``c``, half-extent ``r``;
    out-of-frame samples point at the mask's false border."""
    i = np.floor(((t - c) / r + 1) * (MASK_RES / 2)).astype(np.int64)
    i[(i < 0) | (i >= MASK_RES)] = MASK_RES
    return i


def coverage(shape: str, cx: float, cy: float, r: float, y0: int, x0: int, h: int, w: int,
             ss: int = 4) -> np.ndarray:
    """(h, w) fraction of each pixel of the window at (y0, x0) covered by the shape."""
    off = _offsets(ss)
    xs = ((x0 + np.arange(w))[:, None] + off[None, :]).reshape(-1)          # (w*ss,)
    ys = ((y0 + np.arange(h))[:, None] + off[None, :]).reshape(-1)          # (h*ss,)
    # Lookup in a fine unit mask instead of evaluating the geometry: two 1-D takes for any shape.
    m = unit_mask(shape).take(mask_index(ys, cy, r), 0).take(mask_index(xs, cx, r), 1)   # (h*ss, w*ss)
    return (_pool(h, ss) @ m.astype(np.float32) @ _pool(w, ss).T) * np.float32(1.0 / (ss * ss))


class Renderer:
    """Painter interface: ``paint(state, seed) -> (H, W, 3) uint8``. Swap it for a real image editor
    by pointing ``painter`` in the data config at another class with the same method."""

    def __init__(self, image_size: int = 32, supersample: int = 4, position_jitter: float = 0.04,
                 size_jitter: float = 0.05, color_jitter: int = 8):
        if image_size < 12:
            raise ValueError(f"image_size must be >= 12 px to keep shapes recognisable, got {image_size}")
        self.size, self.ss = image_size, supersample
        self.pj, self.sj, self.cj = position_jitter, size_jitter, color_jitter
        self.cell = image_size / GRID
        self._cache: dict = {}

    def geometry(self, p: Placed, seed: int) -> tuple[float, float, float, np.ndarray]:
        """(cx, cy, r, rgb float) of one object, from the seed and the object's uid only."""
        g = random.Random(seed * 1_000_003 + p.uid)
        cx = (p.col + 0.5 + g.uniform(-self.pj, self.pj)) * self.cell
        cy = (p.row + 0.5 + g.uniform(-self.pj, self.pj)) * self.cell
        r = SIZE_FRACTION[p.size] * self.cell * (1 + g.uniform(-self.sj, self.sj))
        rgb = np.array([min(max(c + g.randint(-self.cj, self.cj), 0), 255) for c in PALETTE[p.color]],
                       np.float32)
        return cx, cy, r, rgb

    def _object(self, p: Placed, seed: int):
        key = (p.shape, p.color, p.size, p.row, p.col, p.uid, seed)
        hit = self._cache.get(key)
        if hit is None:
            cx, cy, r, rgb = self.geometry(p, seed)
            y0, x0 = max(int(cy - r) - 1, 0), max(int(cx - r) - 1, 0)
            y1, x1 = min(int(cy + r) + 2, self.size), min(int(cx + r) + 2, self.size)
            a = coverage(p.shape, cx, cy, r, y0, x0, y1 - y0, x1 - x0, self.ss)
            if len(self._cache) > 4096:      # bounded: builders render many distinct scenes
                self._cache.clear()
            hit = self._cache[key] = (y0, x0, a[..., None], rgb)
        return hit

    def paint(self, state: State, seed: int) -> np.ndarray:
        img = np.empty((self.size, self.size, 3), np.float32)
        img[:] = BACKGROUND
        for p in state.objects:
            y0, x0, a, rgb = self._object(p, seed)
            win = img[y0: y0 + a.shape[0], x0: x0 + a.shape[1]]
            win *= 1 - a
            win += a * rgb
        return np.rint(img, out=img).astype(np.uint8)


to_tensor_range = from_uint8          # the old name (tests import it from here)
