"""A weight-free detector for the painting world.

    image -> background estimate (median of the border) -> foreground mask -> connected components
          -> colour: the palette colour whose mixing line with the background explains the pixels
             best (handles anti-aliased and blurred edges: a pixel is a*colour + (1-a)*background)
          -> shape: the coverage map ``a`` is compared with each shape's template rendered at the
             centre and scale that the component's area and centroid imply; the closest wins
          -> size: the implied half-extent against the renderer's small/large fractions
          -> cell: the centroid's layout cell (relations are read off cells)

Nothing is learned; the templates are the renderer's own geometry. Blur lowers coverage and noise
adds speckles (dropped by a minimum area), so errors grow gradually rather than all at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from .render import MASK_RES, unit_mask, unit_stats
from .scene import GRID, PALETTE, SHAPES, SIZE_FRACTION, Placed, State

_PAL = np.array(list(PALETTE.values()), np.float32)            # (10, 3)
_NAMES = list(PALETTE)


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
    score: float                 # template mismatch / area (0 = perfect)
    area: float                  # summed coverage in pixels


_NEIGHBOURS = [(dy, dx) for dy in range(3) for dx in range(3) if (dy, dx) != (1, 1)]


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components (small images; no scipy needed) -> (labels 1..n, n).

    Every pixel starts with its own index + 1; each sweep takes the neighbourhood maximum and then
    jumps pointers (a label names a pixel of the same component, whose label is at least as large),
    so a component converges to its largest pixel index in O(log diameter) sweeps rather than one
    sweep per pixel of diameter. Components are numbered by that index, as before.
    """
    h, w = mask.shape
    lab = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
    p = np.zeros((h + 2, w + 2), lab.dtype)
    while True:
        p[1:-1, 1:-1] = lab
        nb = lab.copy()
        for dy, dx in _NEIGHBOURS:
            np.maximum(nb, p[dy: dy + h, dx: dx + w], out=nb)
        nb *= mask
        flat = nb.ravel()
        nb = np.where(mask, flat[np.maximum(flat - 1, 0)].reshape(h, w), 0)   # pointer jump
        if np.array_equal(nb, lab):
            break
        lab = nb
    ids = np.unique(lab[lab > 0])
    remap = np.zeros(h * w + 1, np.int64)
    remap[ids] = np.arange(1, len(ids) + 1)
    return remap[lab], len(ids)


@cache
def _templates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every shape's unit mask stacked (S, R+1, R+1) and its unit stats (area (S,), centroid (S, 2))."""
    masks = np.stack([unit_mask(s) for s in SHAPES])
    stats = np.array([unit_stats(s) for s in SHAPES])
    return masks, stats[:, 0], stats[:, 1:]


def fit_shapes(cov: np.ndarray, area: float, mx: float, my: float, y0: int, x0: int, ss: int):
    """Template mismatch of every shape at the scale and centre the coverage implies.

    cov (h, w) coverage window at (y0, x0); one gather for all shapes. -> (scores (S,), r (S,))
    """
    masks, ua, uc = _templates()
    h, w = cov.shape
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
    t = m.reshape(len(ua), h, ss, w, ss).sum(axis=(2, 4), dtype=np.float32) / (ss * ss)
    return np.abs(t - cov).sum(axis=(1, 2)) / area, r


class Detector:
    def __init__(self, threshold: float = 40.0, min_area: float = 2.0, supersample: int = 4):
        self.threshold, self.min_area, self.ss = threshold, min_area, supersample

    def detect(self, image: np.ndarray) -> list[Detection]:
        """image: (H, W, 3) uint8 (or float in [0, 255]) -> detections sorted by (row, col, cx)."""
        img = np.asarray(image, np.float32)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) image, got shape {img.shape}")
        h, w, _ = img.shape
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        bg = np.median(border, axis=0)
        dist = np.linalg.norm(img - bg, axis=2)
        labels, n = label_components(dist > self.threshold)
        cell_y, cell_x = h / GRID, w / GRID
        out = []
        ref = _PAL - bg                                                      # (10, 3)
        ref_sq = (ref * ref).sum(1)
        for k in range(1, n + 1):
            ys, xs = np.nonzero(labels == k)
            y0, y1 = max(ys.min() - 1, 0), min(ys.max() + 2, h)
            x0, x1 = max(xs.min() - 1, 0), min(xs.max() + 2, w)
            win = img[y0:y1, x0:x1] - bg                                     # (h', w', 3)
            lw = labels[y0:y1, x0:x1]
            wh, ww = lw.shape
            own = np.pad(lw == k, 1)                                         # grow by one pixel:
            grown = np.logical_or.reduce([own[dy: dy + wh, dx: dx + ww]     # faint AA edges (the
                                          for dy in range(3) for dx in range(3)])   # window has room)
            grown &= (lw == 0) | (lw == k)
            d = win[grown]                                                   # (n, 3)
            a = np.clip(d @ ref.T / ref_sq, 0, 1)                            # (n, 10) mixing weights
            resid = np.linalg.norm(d[:, None, :] - a[:, :, None] * ref[None], axis=2).sum(0)
            c = int(np.argmin(resid))
            cov = np.zeros(grown.shape, np.float32)
            cov[grown] = a[:, c]
            area = float(cov.sum())
            if area < self.min_area:
                continue
            gy, gx = np.mgrid[y0:y1, x0:x1]
            my = float((cov * (gy + 0.5)).sum() / area)
            mx = float((cov * (gx + 0.5)).sum() / area)
            scores, radii = fit_shapes(cov, area, mx, my, y0, x0, self.ss)
            best = int(np.argmin(scores))                                    # first on ties, as before
            score, shape, r = float(scores[best]), SHAPES[best], float(radii[best])
            cell = (cell_x + cell_y) / 2
            cut = (SIZE_FRACTION["small"] * SIZE_FRACTION["large"]) ** 0.5 * cell
            row = min(max(int(my // cell_y), 0), GRID - 1)
            col = min(max(int(mx // cell_x), 0), GRID - 1)
            out.append(Detection(shape, _NAMES[c], "large" if r > cut else "small", row, col,
                                 mx, my, r, score, area))
        return sorted(out, key=lambda d: (d.row, d.col, d.cx))

    def state(self, image: np.ndarray) -> State:
        """Detections as a State (uids in detection order; no relations stated)."""
        return State(tuple(Placed(d.shape, d.color, d.size, d.row, d.col, uid=i)
                           for i, d in enumerate(self.detect(image))))
