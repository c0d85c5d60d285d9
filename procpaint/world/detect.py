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

import numpy as np

from .render import coverage, unit_stats
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


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components by max-label propagation (small images; no scipy needed)."""
    h, w = mask.shape
    lab = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
    while True:
        p = np.pad(lab, 1)
        nb = np.maximum.reduce([p[dy: dy + h, dx: dx + w] for dy in range(3) for dx in range(3)])
        new = np.where(mask, nb, 0)
        if np.array_equal(new, lab):
            break
        lab = new
    ids = np.unique(lab[lab > 0])
    remap = np.zeros(h * w + 1, np.int64)
    remap[ids] = np.arange(1, len(ids) + 1)
    return remap[lab], len(ids)


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
        for k in range(1, n + 1):
            ys, xs = np.nonzero(labels == k)
            y0, y1 = max(ys.min() - 1, 0), min(ys.max() + 2, h)
            x0, x1 = max(xs.min() - 1, 0), min(xs.max() + 2, w)
            win = img[y0:y1, x0:x1] - bg                                     # (h', w', 3)
            own = np.zeros(labels.shape, bool)
            own[ys, xs] = True
            own = np.pad(own, 1)                                             # grow by one pixel:
            grown = np.logical_or.reduce([own[dy: dy + h, dx: dx + w]       # faint AA edges
                                          for dy in range(3) for dx in range(3)])[y0:y1, x0:x1]
            grown &= (labels[y0:y1, x0:x1] == 0) | (labels[y0:y1, x0:x1] == k)
            d = win[grown]                                                   # (n, 3)
            ref = _PAL - bg                                                  # (10, 3)
            a = np.clip(d @ ref.T / (ref * ref).sum(1), 0, 1)                # (n, 10) mixing weights
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
            best = None
            for s in SHAPES:
                ua, ux, uy = unit_stats(s)
                r = (area / ua) ** 0.5
                t = coverage(s, mx - r * ux, my - r * uy, r, y0, x0, y1 - y0, x1 - x0, self.ss)
                score = float(np.abs(t - cov).sum() / area)
                if best is None or score < best[0]:
                    best = (score, s, r)
            score, shape, r = best
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
