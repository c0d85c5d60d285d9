"""A weight-free detector for the painting world, robust to the blur a generator adds.

    image -> background (median of the border); a global colour offset (background vs the world's
             grey, at most SHIFT_MAX) moves the palette with it
          -> per pixel: the palette colour whose mixing line with the background explains it best and
             its coverage ``a`` (a pixel is a*colour + (1-a)*background: anti-aliasing and blur alike)
          -> loose mask (distance from the background) and cores (coverage > 0.5): objects that blur
             merges into one loose component stay apart by their cores; every pixel within GROW px
             of the loose mask goes to its nearest core (label growing), so an object's blurred
             tail is its own and never its neighbour's
          -> per object: colour from its core pixels, coverage map over its pixels (unclipped for the
             moments, so noise averages out), area and centroid -- both unchanged by any symmetric,
             normalised blur, so the template's scale and centre do not depend on the blur
          -> shape: every shape's template at that scale and centre, box-filtered per pixel and then
             blurred by a Gaussian of sigma in SIGMAS; one sigma per image (the degradation is
             global) minimises the summed best-shape mismatch, and each object takes its best shape
             at that sigma. A clean render fits at sigma 0 exactly as the templates alone did.
          -> size from the implied half-extent; cell from the centroid; a confidence (below).

Confidence (what GenEval's thresholds 0.3 / 0.9 act on) multiplies three factors in [0, 1], each
calibrated on renders of known scenes (benchmarks/bench_judge.py prints the distributions):
the template fit (mismatch beyond what the image's noise explains), the shape evidence (how much
better the best shape fits than the runner-up, relative to the object's size) and sharpness (blur
small against the object's size: a blob as wide as the object is no shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from .render import MASK_RES, unit_mask, unit_stats
from .scene import BACKGROUND, GRID, PALETTE, SHAPES, SIZE_FRACTION, Placed, State

_PAL = np.array(list(PALETTE.values()), np.float32)            # (10, 3)
_NAMES = list(PALETTE)
_BG = np.array(BACKGROUND, np.float32)
SIGMAS = (0.0, 0.35, 0.5, 0.7, 0.9, 1.1, 1.35, 1.6, 1.9, 2.2, 2.6, 3.0)   # blur candidates (px)
SHIFT_MAX = 24.0               # largest global colour offset read off the background
GROW = 3                       # px around the loose mask an object's blurred tail may reach


@dataclass(frozen=True)
class Detection:
    shape: str
    color: str
    size: str
    row: int
    col: int
    cx: float
    cy: float
    r: float                     # implied half-extent in pixels
    score: float                 # template mismatch / area at the image's blur (0 = perfect)
    area: float                  # summed coverage in pixels
    blur: float = 0.0            # the image's fitted blur sigma (px)
    confidence: float = 1.0      # calibrated, in [0, 1] (module docstring)


_NEIGHBOURS = [(dy, dx) for dy in range(3) for dx in range(3) if (dy, dx) != (1, 1)]


def _neighbour_max(lab: np.ndarray) -> np.ndarray:
    """(h, w) -> max over each pixel's 8 neighbours and itself (zero outside)."""
    h, w = lab.shape
    p = np.zeros((h + 2, w + 2), lab.dtype)
    p[1:-1, 1:-1] = lab
    nb = lab.copy()
    for dy, dx in _NEIGHBOURS:
        np.maximum(nb, p[dy: dy + h, dx: dx + w], out=nb)
    return nb


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components (small images; no scipy needed) -> (labels 1..n, n).

    Every pixel starts with its own index + 1; each sweep takes the neighbourhood maximum and then
    jumps pointers (a label names a pixel of the same component, whose label is at least as large),
    so a component converges to its largest pixel index in O(log diameter) sweeps rather than one
    sweep per pixel of diameter. Components are numbered by that index.
    """
    h, w = mask.shape
    lab = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
    while True:
        nb = _neighbour_max(lab) * mask
        flat = nb.ravel()
        nb = np.where(mask, flat[np.maximum(flat - 1, 0)].reshape(h, w), 0)   # pointer jump
        if np.array_equal(nb, lab):
            break
        lab = nb
    ids = np.unique(lab[lab > 0])
    remap = np.zeros(h * w + 1, np.int64)
    remap[ids] = np.arange(1, len(ids) + 1)
    return remap[lab], len(ids)


def grow_labels(lab: np.ndarray, allowed: np.ndarray, steps: int) -> np.ndarray:
    """Unlabelled ``allowed`` pixels take a neighbour's label, ``steps`` rings at most (ties: larger)."""
    for _ in range(steps):
        free = (lab == 0) & allowed
        if not free.any():
            break
        nb = _neighbour_max(lab)
        take = free & (nb > 0)
        if not take.any():
            break
        lab = np.where(take, nb, lab)
    return lab


@cache
def _templates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every shape's unit mask stacked (S, R+1, R+1) and its unit stats (area (S,), centroid (S, 2))."""
    masks = np.stack([unit_mask(s) for s in SHAPES])
    stats = np.array([unit_stats(s) for s in SHAPES])
    return masks, stats[:, 0], stats[:, 1:]


def render_templates(area: float, mx: float, my: float, y0: int, x0: int, h: int, w: int, ss: int):
    """Every shape at the scale and centre that (area, centroid) imply, box-filtered per pixel.

    -> (templates (S, h, w) coverage of the window at (y0, x0), r (S,)); one gather for all shapes.
    """
    masks, ua, uc = _templates()
    r = np.sqrt(area / ua)                                                   # (S,)
    cx, cy = mx - r * uc[:, 0], my - r * uc[:, 1]                            # (S,)
    off = (np.arange(ss) + 0.5) / ss
    xs = ((x0 + np.arange(w))[:, None] + off[None, :]).reshape(-1)          # (w*ss,)
    ys = ((y0 + np.arange(h))[:, None] + off[None, :]).reshape(-1)          # (h*ss,)
    ix = np.floor(((xs[None] - cx[:, None]) / r[:, None] + 1) * (MASK_RES / 2)).astype(np.int64)
    iy = np.floor(((ys[None] - cy[:, None]) / r[:, None] + 1) * (MASK_RES / 2)).astype(np.int64)
    ix[(ix < 0) | (ix >= MASK_RES)] = MASK_RES                               # the false border
    iy[(iy < 0) | (iy >= MASK_RES)] = MASK_RES
    m = masks[np.arange(len(ua))[:, None, None], iy[:, :, None], ix[:, None, :]]   # (S, h*ss, w*ss)
    return m.reshape(len(ua), h, ss, w, ss).sum(axis=(2, 4), dtype=np.float32) / (ss * ss), r


@cache
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) Gaussian blur along one axis, zero outside the window (which has room for the tail)."""
    if sigma <= 0:
        return np.eye(n, dtype=np.float32)
    d = np.arange(n)[:, None] - np.arange(n)[None, :]
    k = max(int(np.ceil(3 * sigma)), 1)
    g = np.exp(-0.5 * (np.arange(-k, k + 1) / sigma) ** 2)
    g /= g.sum()
    m = np.where(np.abs(d) <= k, g[np.clip(d + k, 0, 2 * k)], 0.0)
    return m.astype(np.float32)


def fit_blurred(t: np.ndarray, cov: np.ndarray, own: np.ndarray) -> np.ndarray:
    """L1 mismatch on the object's own pixels of every template blurred by every sigma.

    t (S, h, w) templates, cov (h, w) coverage clipped to [0, 1], own (h, w) bool -> (len(SIGMAS), S).
    """
    h, w = cov.shape
    out = np.empty((len(SIGMAS), len(t)), np.float32)
    for i, s in enumerate(SIGMAS):
        b = np.einsum("yY,sYX,xX->syx", _blur_matrix(h, s), t, _blur_matrix(w, s), optimize=True)
        out[i] = (np.abs(b - cov) * own).sum(axis=(1, 2))
    return out


def _ramp(x: float, lo: float, hi: float) -> float:
    """1 at or below ``lo``, 0 at or above ``hi``, linear between."""
    return float(min(max((hi - x) / (hi - lo), 0.0), 1.0))


def confidence(excess: float, margin: float, blur_ratio: float) -> float:
    """Calibrated confidence from the fit's features (tables in benchmarks/bench_judge.py).

    excess: mismatch per unit area beyond the image's noise; margin: runner-up shape's mismatch minus
    the best's, per unit area; blur_ratio: fitted blur sigma / implied half-extent.
    """
    return (_ramp(excess, FIT_OK, FIT_BAD) * (1 - _ramp(margin, MARGIN_BAD, MARGIN_OK))
            * _ramp(blur_ratio, SHARP_OK, SHARP_BAD))


FIT_OK, FIT_BAD = 0.25, 0.6          # mismatch per area
MARGIN_BAD, MARGIN_OK = 0.0, 0.04    # shape evidence per area
SHARP_OK, SHARP_BAD = 0.5, 0.8       # blur sigma / half-extent


class Detector:
    """``detect(image) -> [Detection]``; ``state(image) -> State``. Works at any image size."""

    def __init__(self, threshold: float = 40.0, min_area: float = 2.0, supersample: int = 4):
        self.threshold, self.min_area, self.ss = threshold, min_area, supersample

    def _segment(self, img: np.ndarray):
        """-> (d (H, W, 3) image minus background, ref (10, 3) palette minus background,
        labels (H, W) per object, n, core (H, W) bool, noise (3,) robust std of the border)."""
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        bg = np.median(border, axis=0)
        # A generator's colour cast moves background and objects alike: move the palette with it.
        ref = _PAL + np.clip(bg - _BG, -SHIFT_MAX, SHIFT_MAX) - bg          # (10, 3)
        noise = 1.4826 * np.median(np.abs(border - bg), axis=0)             # (3,)
        d = img - bg                                                         # (H, W, 3)
        loose = np.linalg.norm(d, axis=2) > self.threshold
        if not loose.any():
            return d, ref, np.zeros(loose.shape, np.int64), 0, loose, noise
        ref_sq = (ref * ref).sum(1)
        a = np.clip(d @ ref.T / ref_sq, 0, 1)                                # (H, W, 10)
        res = np.linalg.norm(d[:, :, None, :] - a[..., None] * ref, axis=3)  # (H, W, 10)
        cov = np.take_along_axis(a, res.argmin(2)[..., None], 2)[..., 0]     # (H, W)
        core = loose & (cov > 0.5)
        lab_loose, nl = label_components(loose)
        has_core = np.zeros(nl + 1, bool)
        has_core[lab_loose[core]] = True
        core |= loose & ~has_core[lab_loose]            # a faint object is its own core
        lab, n = label_components(core)
        allowed = loose.copy()
        for _ in range(GROW):
            allowed = _neighbour_max(allowed)
        return d, ref, grow_labels(lab, allowed, 2 * GROW + 4), n, core, noise

    def detect(self, image: np.ndarray) -> list[Detection]:
        """image: (H, W, 3) uint8 (or float in [0, 255]) -> detections sorted by (row, col, cx)."""
        img = np.asarray(image, np.float32)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) image, got shape {img.shape}")
        h, w, _ = img.shape
        d, ref, labels, n, core, noise = self._segment(img)
        ref_sq = (ref * ref).sum(1)
        objs = []
        for k in range(1, n + 1):
            ys, xs = np.nonzero(labels == k)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            own = labels[y0:y1, x0:x1] == k
            win = d[y0:y1, x0:x1]                                            # (h', w', 3)
            sel = own & core[y0:y1, x0:x1]
            px = win[sel]                                                    # (n, 3) core pixels
            a = np.clip(px @ ref.T / ref_sq, 0, 1)                           # (n, 10) mixing weights
            c = int(np.argmin(np.linalg.norm(px[:, None, :] - a[:, :, None] * ref[None], axis=2).sum(0)))
            covu = (win @ ref[c]) / ref_sq[c] * own                          # unclipped: noise averages
            area = float(covu.sum())
            if area < self.min_area:
                continue
            gy, gx = np.mgrid[y0:y1, x0:x1]
            my = float((covu * (gy + 0.5)).sum() / area)
            mx = float((covu * (gx + 0.5)).sum() / area)
            t, radii = render_templates(area, mx, my, y0, x0, y1 - y0, x1 - x0, self.ss)
            fits = fit_blurred(t, np.clip(covu, 0, 1) * own, own)          # (len(SIGMAS), S)
            # Noise in coverage units along this colour; clipping at 0 halves it on the background.
            sig = float(np.linalg.norm(noise * ref[c]) / ref_sq[c])
            objs.append((c, area, mx, my, radii, fits, 0.6 * sig * own.sum()))
        if not objs:
            return []
        # One blur for the image: the sigma whose best shapes explain every object best together.
        total = sum(f.min(axis=1) for _, _, _, _, _, f, _ in objs)
        i = int(np.argmin(total))
        blur = SIGMAS[i]
        cell_y, cell_x = h / GRID, w / GRID
        cut = (SIZE_FRACTION["small"] * SIZE_FRACTION["large"]) ** 0.5 * (cell_x + cell_y) / 2
        out = []
        for c, area, mx, my, radii, fits, noise_l1 in objs:
            order = np.argsort(fits[i], kind="stable")
            best, second = int(order[0]), int(order[1])
            r = float(radii[best])
            score = float(fits[i, best]) / area
            conf = confidence(max(float(fits[i, best]) - noise_l1, 0.0) / area,
                              float(fits[i, second] - fits[i, best]) / area, blur / r)
            row = min(max(int(my // cell_y), 0), GRID - 1)
            col = min(max(int(mx // cell_x), 0), GRID - 1)
            out.append(Detection(SHAPES[best], _NAMES[c], "large" if r > cut else "small", row, col,
                                 mx, my, r, score, area, blur, conf))
        return sorted(out, key=lambda d: (d.row, d.col, d.cx))

    def state(self, image: np.ndarray) -> State:
        """Detections as a State (uids in detection order; no relations stated)."""
        return State(tuple(Placed(d.shape, d.color, d.size, d.row, d.col, uid=i)
                           for i, d in enumerate(self.detect(image))))
