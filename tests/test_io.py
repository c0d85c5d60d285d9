"""procpaint.io: the image range convention and atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from procpaint.io import atomic_save, atomic_write, from_uint8, to_uint8, write_image


def test_uint8_round_trip_every_value():
    img = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3).astype(np.uint8)   # every byte
    x = from_uint8(img)
    assert x.dtype == np.float32 and x.shape == (3, 16, 16) and x.flags.c_contiguous
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(to_uint8(x), img)
    np.testing.assert_array_equal(to_uint8(torch.from_numpy(x).to(torch.bfloat16)), img)


def test_to_uint8_clips_and_passes_uint8_through():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]).reshape(1, 1, 5).expand(3, 1, 5)
    assert to_uint8(x)[0, :, 0].tolist() == [0, 0, 128, 255, 255]       # 127.5 rounds to even
    img = np.zeros((4, 4, 3), np.uint8)
    assert to_uint8(img) is img
    with pytest.raises(ValueError, match="expected a"):
        to_uint8(np.zeros((4, 4)))


def test_atomic_save_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.bin"

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_save(target, fail)
    assert list(target.parent.iterdir()) == []
    assert atomic_write(target, "é") == target and target.read_bytes() == "é".encode()
    assert atomic_write(target, b"\x00") == target and target.read_bytes() == b"\x00"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


def test_write_image_png(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    for image in (img, from_uint8(img), torch.from_numpy(from_uint8(img)), Image.fromarray(img)):
        path = write_image(tmp_path / "a" / "x.png", image)
        with Image.open(path) as im:
            assert im.format == "PNG"
            np.testing.assert_array_equal(np.asarray(im.convert("RGB")), img)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.png"]
