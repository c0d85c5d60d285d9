"""Renderer determinism/incrementality and detector accuracy on held-out seeded scenes."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from procpaint.world import Detector, Obj, Renderer, Spec, State, realize
from procpaint.world.registry import build, import_path
from procpaint.world.scene import SHAPES


def _scenes(n, seed=12345):
    rng = np.random.default_rng(seed)
    for i in range(n):
        k = int(rng.integers(1, 6))
        yield i, realize(Spec(tuple(Obj(SHAPES[int(rng.integers(6))]) for _ in range(k))), rng)


def _accuracy(images_states, det):
    ok = tot = 0
    for img, st in images_states:
        exp = [(p.shape, p.color, p.size, p.row, p.col) for p in st.objects]
        got = [(p.shape, p.color, p.size, p.row, p.col) for p in det.state(img).objects]
        tot += len(exp)
        ok += sum(min(exp.count(e), got.count(e)) for e in set(exp))
    return ok / tot


def test_render_deterministic_and_incremental():
    r = Renderer(32)
    _, st = next(_scenes(1))
    a, b = r.paint(st, 7), Renderer(32).paint(st, 7)
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, r.paint(st, 8))             # seeded jitter
    # Dropping the last object leaves every other pixel untouched (objects never overlap).
    part = State(st.objects[:-1])
    diff = np.any(r.paint(part, 7) != a, axis=2)
    assert diff.any() and diff.sum() < 32 * 32 / 4


def test_detector_accuracy_on_heldout_scenes():
    r, det = Renderer(32), Detector()
    acc = _accuracy(((r.paint(st, 10_000 + i), st) for i, st in _scenes(150)), det)
    assert acc >= 0.99, acc


def test_detector_other_sizes():
    for size in (24, 48):
        r = Renderer(size)
        acc = _accuracy(((r.paint(st, i), st) for i, st in _scenes(40, seed=size)), Detector())
        assert acc >= 0.97, (size, acc)


def test_detector_degrades_gracefully():
    r, det = Renderer(32), Detector()
    pairs = [(r.paint(st, i), st) for i, st in _scenes(60, seed=99)]
    blur = [(np.array(Image.fromarray(img).filter(ImageFilter.GaussianBlur(0.5))), st) for img, st in pairs]
    rng = np.random.default_rng(0)
    noisy = [(np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8), st) for img, st in pairs]
    assert _accuracy(blur, det) >= 0.9
    assert _accuracy(noisy, det) >= 0.95


def test_registry_builds_by_class_path():
    assert isinstance(build("painter", image_size=16), Renderer)
    assert import_path("procpaint.world.detect.Detector") is Detector
    try:
        import_path("procpaint.world.nope:X")
    except ImportError as e:
        assert "procpaint.world.nope" in str(e)
    else:
        raise AssertionError
