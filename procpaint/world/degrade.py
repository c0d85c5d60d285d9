"""Image degradations a generator applies to a picture, to measure the judge's robustness.

One home for them: ``benchmarks/bench_judge.py`` (the robustness table) and the tests use the same
functions. Every degradation maps an (H, W, 3) uint8 image to an (H, W, 3) uint8 image and is
deterministic given ``seed`` (noise and colour shift draw from it; the rest ignore it).

    clean     the render itself
    down2     bilinear (antialiased) downsample by 2, bilinear upsample back -- a low-res latent grid
    down4     the same by 4
    gauss0.5  separable Gaussian blur, sigma 0.5 px (also 1.0, 1.5)
    noise10   additive Gaussian noise, sigma 10/255 of the range
    shift12   a fixed per-image colour offset, uniform in [-12, 12] per channel
    soft      3x3 box blur: a soft edge (the alpha blurred one pixel), flat colours unchanged

Only torch and numpy: ``interpolate`` is what a decoder's upsampler does; the Gaussian is applied as
two 1-D convolutions with reflect padding (reflection keeps an object's mass inside the frame).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F


def _to_t(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float64 in [0, 255]."""
    return torch.from_numpy(np.ascontiguousarray(img, np.float64)).permute(2, 0, 1)[None]


def _to_u8(t: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float -> (H, W, 3) uint8 (rounded, clipped)."""
    return t[0].permute(1, 2, 0).clamp(0, 255).round().numpy().astype(np.uint8)


def resample(img: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear down by ``factor`` (antialiased, as PIL resizes) then bilinear up to the input size."""
    h, w = img.shape[:2]
    t = _to_t(img)
    small = F.interpolate(t, size=(max(h // factor, 1), max(w // factor, 1)), mode="bilinear",
                          align_corners=False, antialias=True)
    return _to_u8(F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False))


@cache
def gaussian_kernel(sigma: float) -> np.ndarray:
    """(2k+1,) normalised 1-D Gaussian taps, k = ceil(3 sigma)."""
    k = max(int(np.ceil(3 * sigma)), 1)
    x = np.arange(-k, k + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def separable(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Convolve every channel with ``taps`` along y then x (reflect padding); float in, float out.

    img (H, W, C) or (H, W) float -> same shape.
    """
    t = torch.from_numpy(np.ascontiguousarray(img, np.float64))
    squeeze = t.ndim == 2
    t = (t[..., None] if squeeze else t).permute(2, 0, 1)[:, None]          # (C, 1, H, W)
    k = len(taps) // 2
    kt = torch.from_numpy(np.asarray(taps, np.float64))
    mode = "reflect" if min(t.shape[-2:]) > k else "replicate"
    t = F.conv2d(F.pad(t, (0, 0, k, k), mode=mode), kt.view(1, 1, -1, 1))
    t = F.conv2d(F.pad(t, (k, k, 0, 0), mode=mode), kt.view(1, 1, 1, -1))
    out = t[:, 0].permute(1, 2, 0).numpy()
    return out[..., 0] if squeeze else out


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(np.rint(separable(img, gaussian_kernel(sigma))), 0, 255).astype(np.uint8)


def box_blur(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(separable(img, np.full(3, 1 / 3))), 0, 255).astype(np.uint8)


def add_noise(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 10])
    return np.clip(np.rint(img + rng.normal(0, sigma, img.shape)), 0, 255).astype(np.uint8)


def color_shift(img: np.ndarray, amount: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 12])
    off = rng.integers(-amount, amount + 1, 3)
    return np.clip(img.astype(np.int64) + off, 0, 255).astype(np.uint8)


DEGRADATIONS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "clean": lambda im, s: np.array(im, np.uint8),
    "down2": lambda im, s: resample(im, 2),
    "down4": lambda im, s: resample(im, 4),
    "gauss0.5": lambda im, s: gaussian_blur(im, 0.5),
    "gauss1.0": lambda im, s: gaussian_blur(im, 1.0),
    "gauss1.5": lambda im, s: gaussian_blur(im, 1.5),
    "noise10": lambda im, s: add_noise(im, 10.0, s),
    "shift12": lambda im, s: color_shift(im, 12, s),
    "soft": lambda im, s: box_blur(im),
}


def degrade(img: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 3) uint8 degraded by ``name`` (a key of ``DEGRADATIONS``)."""
    try:
        fn = DEGRADATIONS[name]
    except KeyError:
        raise ValueError(f"unknown degradation {name!r}; known: {sorted(DEGRADATIONS)}") from None
    return fn(np.asarray(img), seed)
