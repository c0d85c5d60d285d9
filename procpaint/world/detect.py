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
             passed through each blur candidate (KERNELS: Gaussians, and bilinear down/up-sampling
             by 2 and 4); one kernel per image (the degradation is global) minimises the summed
             best-shape mismatch; under blur a small search over scale and centre (REFINE) follows,
             and each object takes its best shape. A clean render is recognised first (every object
             fits unblurred templates within CLEAN_FIT) and fits as the templates alone always did.
          -> size from the implied half-extent; cell from the centroid; a confidence (below).

Confidence (what GenEval's thresholds 0.3 / 0.9 act on) multiplies four factors in [0, 1],
calibrated on renders of known scenes (:func:`confidence`; benchmarks/bench_judge.py prints the
distributions): the template fit beyond the image's noise, the shape evidence (runner-up shape's
mismatch minus the best's), sharpness (blur small against the object) and size (a smudge a fraction
of the world's smallest object is not an object).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

from .render import MASK_RES, unit_mask, unit_stats
from .scene import BACKGROUND, GRID, PALETTE, SHAPES, SIZE_FRACTION, Placed, State

_PAL = np.array(list(PALETTE.values()), np.float32)            # (10, 3)
_NAMES = list(PALETTE)
_BG = np.array(BACKGROUND, np.float32)
SIGMAS = (0.0, 0.35, 0.5, 0.7, 0.9, 1.1, 1.35, 1.6, 1.9, 2.2, 2.6, 3.0)   # Gaussian blurs (px)
# The blur candidates: Gaussians, and bilinear down/up-sampling by 2 and 4 (what decoding a latent
# grid does; its kernel is neither Gaussian nor shift-invariant, and a Gaussian of equal variance
# misreads small shapes under it -- measured in benchmarks/bench_judge.py).
KERNELS = tuple(("gauss", s) for s in SIGMAS) + (("resample", 2), ("resample", 4))
CLEAN_FIT = 0.12               # every object fits unblurred templates this well: a clean image
# Refinement under blur: area and centroid are blur-invariant but read off quantised, clipped
# pixels; a small search over scale and centre recovers what that loses.
REFINE = ((1.0, 0.0, 0.0), (0.92, 0.0, 0.0), (1.08, 0.0, 0.0), (1.0, -0.5, 0.0), (1.0, 0.5, 0.0),
          (1.0, 0.0, -0.5), (1.0, 0.0, 0.5), (0.92, 0.5, 0.5), (1.08, -0.5, -0.5))
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
    excess: float = 0.0          # mismatch per area beyond what the image's noise explains
    margin: float = 0.0          # runner-up shape's mismatch minus the best's, per area


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
    s, side = len(ua), masks.shape[-1]
    rows = (np.arange(s)[:, None] * side + iy) * side                       # (S, h*ss) flat row starts
    m = masks.reshape(-1).take(rows[:, :, None] + ix[:, None, :])           # (S, h*ss, w*ss) bool
    # Box filter as two contiguous sums of 0/1 samples (exact integers: the same values as one sum
    # over both axes, ~2x faster).
    m = m.reshape(s, h, ss, w * ss).sum(axis=2, dtype=np.uint8)              # (S, h, w*ss)
    return m.reshape(s, h, w, ss).sum(axis=3, dtype=np.float32) / (ss * ss), r


@cache
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) Gaussian blur along one axis, zero outside the window (which has room for the tail)."""
    if sigma <= 0:
        return np.eye(n, dtype=np.float32)
    d = np.arange(n)[:, None] - np.arange(n)[None, :]
    k = max(int(np.ceil(3 * sigma)), 1)
    g = np.exp(-0.5 * (np.arange(-k, k + 1) / sigma) ** 2)
    g /= g.sum()
    return np.where(np.abs(d) <= k, g[np.clip(d + k, 0, 2 * k)], 0.0).astype(np.float32)


def kernel_sigma(kernel: tuple[str, float]) -> float:
    """A kernel's blur as one number: the Gaussian's sigma, or the resample's (two triangles of
    half-width f: variance f^2 / 3 per axis)."""
    kind, v = kernel
    return float(v) if kind == "gauss" else float(v) / np.sqrt(3.0)


def blurred_templates(area: float, mx: float, my: float, box: tuple[int, int, int, int],
                      kernel: tuple[str, float], shape_hw: tuple[int, int], ss: int):
    """Every shape's template (scale and centre from area and centroid) through ``kernel``, on the
    object's window ``box`` = (y0, y1, x0, x1) of an image of ``shape_hw``. -> ((S, h, w), r (S,)).

    A Gaussian blurs the window (it has room for the tail). A resample is phase-locked to the image
    grid, so the templates are drawn on a window aligned to the factor (the whole image when the
    factor does not divide it), resampled as the image was, and cropped.
    """
    y0, y1, x0, x1 = box
    kind, v = kernel
    if kind == "gauss":
        t, r = render_templates(area, mx, my, y0, x0, y1 - y0, x1 - x0, ss)
        if v > 0:
            t = _blur_matrix(y1 - y0, v) @ t @ _blur_matrix(x1 - x0, v).T
        return t, r
    f, (h, w) = int(v), shape_hw
    if h % f or w % f:
        wy0, wy1, wx0, wx1 = 0, h, 0, w
    else:
        wy0, wx0 = max((y0 // f - 2) * f, 0), max((x0 // f - 2) * f, 0)
        wy1, wx1 = min((-(-y1 // f) + 2) * f, h), min((-(-x1 // f) + 2) * f, w)
    t, r = render_templates(area, mx, my, wy0, wx0, wy1 - wy0, wx1 - wx0, ss)
    tt = torch.from_numpy(t)[:, None]                                       # (S, 1, h', w')
    small = F.interpolate(tt, size=((wy1 - wy0) // f, (wx1 - wx0) // f), mode="bilinear",
                          align_corners=False, antialias=True)
    tt = F.interpolate(small, size=tt.shape[-2:], mode="bilinear", align_corners=False)
    return tt[:, 0, y0 - wy0: y1 - wy0, x0 - wx0: x1 - wx0].numpy(), r


def mismatch(t: np.ndarray, cov: np.ndarray, own: np.ndarray) -> np.ndarray:
    """L1 mismatch on the object's own pixels. t (S, h, w), cov (h, w) in [0, 1], own (h, w) -> (S,)."""
    return (np.abs(t - cov) * own).sum(axis=(1, 2))


def _ramp(x: float, lo: float, hi: float) -> float:
    """1 at or below ``lo``, 0 at or above ``hi``, linear between."""
    return float(min(max((hi - x) / (hi - lo), 0.0), 1.0))


def confidence(excess: float, margin: float, blur_ratio: float, size_ratio: float) -> float:
    """Calibrated confidence in [0, 1] from the fit's features (calibration tables in
    benchmarks/results/2026-12-02-judge-robustness-cpu.md).

    excess: mismatch per unit area beyond the image's noise (a shape that fits no template);
    margin: runner-up shape's mismatch minus the best's, per unit area (a blob fits all shapes alike);
    blur_ratio: fitted blur sigma / half-extent (blur as wide as the object leaves no shape);
    size_ratio: half-extent / the world's small half-extent (a smudge a fraction of the smallest
    object the world draws is not an object).
    """
    return (_ramp(excess, FIT_OK, FIT_BAD) * (1 - _ramp(margin, MARGIN_BAD, MARGIN_OK))
            * _ramp(blur_ratio, SHARP_OK, SHARP_BAD) * (1 - _ramp(size_ratio, SIZE_BAD, SIZE_OK)))


# Measured at 64 px (true objects under every degradation vs blobs, 4-px smudges, half shapes):
# true objects have excess <= 0.12 (noise: <= 0.3), margin >= 0.04 except small shapes under 4x
# resampling, blur/r <= 0.6, size >= 0.63; blobs have margin <= 0.026, 4-px smudges size ~0.2.
FIT_OK, FIT_BAD = 0.3, 0.6           # mismatch per area beyond noise
MARGIN_BAD, MARGIN_OK = 0.002, 0.015  # shape evidence per area
SHARP_OK, SHARP_BAD = 0.6, 0.9       # blur sigma / half-extent
SIZE_BAD, SIZE_OK = 0.4, 0.6         # half-extent / small half-extent


class Detector:
    """``detect(image) -> [Detection]``; ``state(image) -> State``. Works at any image size."""

    def __init__(self, threshold: float = 40.0, min_area: float = 2.0, supersample: int = 4,
                 kernels: tuple = KERNELS):
        self.threshold, self.min_area, self.ss, self.kernels = threshold, min_area, supersample, kernels

    def _segment(self, img: np.ndarray):
        """-> (d (H, W, 3) image minus background, ref (10, 3) palette minus background,
        labels (H, W) per object, n, core (H, W) bool, noise (3,) robust std of the border)."""
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        bg = np.median(border, axis=0)
        # A generator's colour cast moves background and objects alike: move the palette with it.
        ref = _PAL + np.clip(bg - _BG, -SHIFT_MAX, SHIFT_MAX) - bg          # (10, 3)
        noise = 1.4826 * np.median(np.abs(border - bg), axis=0)             # (3,)
        d = img - bg                                                         # (H, W, 3)
        d_sq = (d * d).sum(2)
        loose = d_sq > self.threshold ** 2
        if not loose.any():
            return d, ref, np.zeros(loose.shape, np.int64), 0, loose, noise
        ref_sq = (ref * ref).sum(1)
        dot = d @ ref.T                                                      # (H, W, 10)
        a = np.clip(dot / ref_sq, 0, 1)
        res = d_sq[..., None] - 2 * a * dot + a * a * ref_sq                 # squared residual
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

    def _objects(self, img: np.ndarray) -> list[dict]:
        """Segmented objects with colour, coverage window, area and centroid."""
        d, ref, labels, n, core, noise = self._segment(img)
        ref_sq = (ref * ref).sum(1)
        objs = []
        for k in range(1, n + 1):
            ys, xs = np.nonzero(labels == k)
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
            own = labels[y0:y1, x0:x1] == k
            win = d[y0:y1, x0:x1]                                            # (h', w', 3)
            px = win[own & core[y0:y1, x0:x1]]                               # (n, 3) core pixels
            a = np.clip(px @ ref.T / ref_sq, 0, 1)                           # (n, 10) mixing weights
            c = int(np.argmin(np.linalg.norm(px[:, None, :] - a[:, :, None] * ref[None], axis=2).sum(0)))
            covu = (win @ ref[c]) / ref_sq[c] * own                          # unclipped: noise averages
            area = float(covu.sum())
            if area < self.min_area:
                continue
            gy, gx = np.mgrid[y0:y1, x0:x1]
            # Noise in coverage units along this colour; clipping at 0 roughly halves its L1.
            sig = float(np.linalg.norm(noise * ref[c]) / ref_sq[c])
            objs.append({"c": c, "area": area, "box": (y0, y1, x0, x1), "own": own,
                         "cov": np.clip(covu, 0, 1), "noise_l1": 0.6 * sig * float(own.sum()),
                         "my": float((covu * (gy + 0.5)).sum() / area),
                         "mx": float((covu * (gx + 0.5)).sum() / area)})
        return objs

    def _fit(self, o: dict, kernel, hw, refine: bool) -> tuple[np.ndarray, np.ndarray]:
        """-> (mismatch (S,), r (S,)) of every shape through ``kernel``; best over REFINE if asked.

        Full supersampling: with 2x2 samples small shapes under down4 are misread (measured).
        """
        ss = self.ss
        best, radii = None, None
        for sa, dy, dx in (REFINE if refine else ((1.0, 0.0, 0.0),)):
            t, r = blurred_templates(o["area"] * sa, o["mx"] + dx, o["my"] + dy, o["box"], kernel, hw, ss)
            m = mismatch(t, o["cov"], o["own"])
            if best is None:
                best, radii = m, r
            else:
                better = m < best
                best, radii = np.where(better, m, best), np.where(better, r, radii)
        return best, radii

    def _select(self, objs: list[dict], hw) -> tuple:
        """The image's kernel: least summed best-shape mismatch over all objects (unrefined)."""
        totals = np.zeros(len(self.kernels))
        for o in objs:
            y0, y1, x0, x1 = o["box"]
            t0, _ = render_templates(o["area"], o["mx"], o["my"], y0, x0, y1 - y0, x1 - x0, min(self.ss, 2))
            for i, k in enumerate(self.kernels):
                if k[0] == "gauss":                 # one drawing serves every Gaussian
                    by, bx = _blur_matrix(y1 - y0, k[1]), _blur_matrix(x1 - x0, k[1])
                    totals[i] += mismatch(by @ t0 @ bx.T, o["cov"], o["own"]).min()
                else:
                    totals[i] += self._fit(o, k, hw, False)[0].min()
        return self.kernels[int(np.argmin(totals))]

    def detect(self, image: np.ndarray) -> list[Detection]:
        """image: (H, W, 3) uint8 (or float in [0, 255]) -> detections sorted by (row, col, cx)."""
        img = np.asarray(image, np.float32)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) image, got shape {img.shape}")
        h, w, _ = img.shape
        objs = self._objects(img)
        if not objs:
            return []
        ident = ("gauss", 0.0)
        fits = [self._fit(o, ident, (h, w), False) for o in objs]
        kernel = ident
        if max(f.min() / o["area"] for (f, _), o in zip(fits, objs)) > CLEAN_FIT:
            # One kernel for the image (the degradation is global): the one under which every
            # object's best shape explains it best, summed; then refine each object under it.
            kernel = self._select(objs, (h, w))
            if kernel != ident:
                fits = [self._fit(o, kernel, (h, w), True) for o in objs]
        blur = kernel_sigma(kernel)
        cell_y, cell_x = h / GRID, w / GRID
        cut = (SIZE_FRACTION["small"] * SIZE_FRACTION["large"]) ** 0.5 * (cell_x + cell_y) / 2
        small = SIZE_FRACTION["small"] * (cell_x + cell_y) / 2
        out = []
        for o, (f, radii) in zip(objs, fits):
            order = np.argsort(f, kind="stable")
            best, second = int(order[0]), int(order[1])
            r, area = float(radii[best]), o["area"]
            excess = max(float(f[best]) - o["noise_l1"], 0.0) / area
            margin = float(f[second] - f[best]) / area
            conf = confidence(excess, margin, blur / r, r / small)
            row = min(max(int(o["my"] // cell_y), 0), GRID - 1)
            col = min(max(int(o["mx"] // cell_x), 0), GRID - 1)
            out.append(Detection(SHAPES[best], _NAMES[o["c"]], "large" if r > cut else "small", row, col,
                                 o["mx"], o["my"], r, float(f[best]) / area, area, blur, conf,
                                 excess, margin))
        return sorted(out, key=lambda d: (d.row, d.col, d.cx))

    def state(self, image: np.ndarray) -> State:
        """Detections as a State (uids in detection order; no relations stated)."""
        return state_of(self.detect(image))


def state_of(detections: list[Detection]) -> State:
    """Detections as a State (uids in detection order; no relations stated)."""
    return State(tuple(Placed(d.shape, d.color, d.size, d.row, d.col, uid=i)
                       for i, d in enumerate(detections)))
