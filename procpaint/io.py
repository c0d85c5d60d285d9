"""Small helpers every room uses: the image range convention and writes that are never half-done.

Images are (3, H, W) float in [-1, 1] inside the model and in a ``Sample`` (procpaint.sequence.types),
and (H, W, 3) uint8 on disk, from the world's renderer and for the detector. :func:`to_uint8` and
:func:`from_uint8` convert between the two (``to_uint8(from_uint8(img)) == img`` for uint8 ``img``).

Every file procpaint writes goes to a temporary name beside it and is renamed (:func:`atomic_save`),
so an interrupted run leaves whole files only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def to_uint8(image) -> np.ndarray:
    """(3, H, W) float in [-1, 1] (torch or numpy) or (H, W, 3) uint8 -> (H, W, 3) uint8.

    Values outside [-1, 1] are clipped; rounding is to nearest (ties to even)."""
    if hasattr(image, "detach"):
        image = image.detach().float().cpu().numpy()
    a = np.asarray(image)
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3:
        return a
    if a.ndim != 3 or a.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image in [-1, 1], got shape {a.shape}")
    return np.clip(np.round((a.transpose(1, 2, 0) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_uint8(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1] (C-contiguous), the ``Sample`` convention."""
    return np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1), dtype=np.float32) / 127.5 - 1.0


def atomic_save(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` writes the file at a temporary name beside ``path``, which is then renamed to
    ``path`` (parent folders are created; a failed write leaves no temporary file). -> ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (str as UTF-8) to ``path`` through a temporary name. -> ``path``."""
    raw = data.encode() if isinstance(data, str) else data
    return atomic_save(path, lambda tmp: tmp.write_bytes(raw))


def write_image(path: str | Path, image) -> Path:
    """Write an image (anything :func:`to_uint8` takes, or a PIL image) as PNG through a temporary
    name. -> ``path``."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(to_uint8(image))
    return atomic_save(path, lambda tmp: im.save(tmp, format="PNG"))
