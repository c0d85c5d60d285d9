"""The judge on degraded renders of known scenes: degradations, exactness on clean renders,
robustness to blur, calibrated confidence and GenEval's thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from procpaint.evaluation import geneval
from procpaint.evaluation import robustness as R
from procpaint.world import Detector, Renderer, State
from procpaint.world.degrade import DEGRADATIONS, degrade
from procpaint.world.detect import Detection
from procpaint.world.scene import BACKGROUND, Placed

DET = Detector()


def test_degradations_keep_shape_and_are_deterministic():
    img = Renderer(32).paint(State((Placed("star", "blue", "large", 1, 1),)), 3)
    for name in DEGRADATIONS:
        out = degrade(img, name, seed=4)
        assert out.shape == img.shape and out.dtype == np.uint8, name
        assert np.array_equal(out, degrade(img, name, seed=4)), name
        if name != "clean":
            assert not np.array_equal(out, img), name
    assert np.array_equal(degrade(img, "clean"), img)
    assert not np.array_equal(degrade(img, "noise10", 1), degrade(img, "noise10", 2))
    flat = np.full((32, 32, 3), 77, np.uint8)                   # blur and resampling keep flat colour
    for name in ("down2", "down4", "gauss1.5", "soft"):
        assert np.array_equal(degrade(flat, name), flat), name
    # A blur moves colour, it does not create or destroy it (reflect padding keeps it in frame).
    blurred = degrade(img, "gauss1.0").astype(float)
    assert abs(blurred.mean() - img.astype(float).mean()) < 0.5
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(img, "jpeg")


@pytest.mark.parametrize("size", [32, 64])
def test_clean_renders_are_judged_exactly(size):
    r = Renderer(size)
    for tag in geneval.GENEVAL_TAGS:
        for c in R.cases(tag, 6, seed=11):
            o = R.rates([c], r, "clean", DET)
            for j in ("geneval", "exact"):
                assert o[j]["accept"] == [1, 1], (size, tag, j, c.state)
                assert o[j]["reject"][0] == o[j]["reject"][1], (size, tag, j, o[j]["by_kind"])


@pytest.mark.parametrize("degradation", ["down2", "gauss1.0", "noise10", "shift12"])
def test_degraded_renders_at_64px(degradation):
    r = Renderer(64)
    cs = [c for t in geneval.GENEVAL_TAGS for c in R.cases(t, 5, seed=21)]
    o = R.rates(cs, r, degradation, DET)
    for j in ("geneval", "exact"):
        (a, n), (k, m) = o[j]["accept"], o[j]["reject"]
        assert a / n >= 0.9 and k / m >= 0.9, (degradation, j, o[j])


def test_kernel_is_estimated_from_the_image():
    r = Renderer(64)
    state = R.cases("two_object", 1, seed=5)[0].state
    img = r.paint(state, 5)
    assert {d.blur for d in DET.detect(img)} == {0.0}
    assert all(d.blur > 1.5 for d in DET.detect(degrade(img, "down4")))
    assert all(0.8 <= d.blur <= 1.2 for d in DET.detect(degrade(img, "gauss1.0")))


def test_a_colour_cast_moves_the_palette():
    img = Renderer(64).paint(State((Placed("cross", "pink", "small", 0, 2),
                                    Placed("square", "purple", "large", 2, 0, uid=1))), 8)
    cast = np.clip(img.astype(int) + np.array([12, -12, 12]), 0, 255).astype(np.uint8)
    assert [(d.shape, d.color, d.size) for d in DET.detect(cast)] == \
        [("cross", "pink", "small"), ("square", "purple", "large")]


@pytest.mark.parametrize("size", [32, 64])
def test_a_four_pixel_smudge_is_not_an_object(size):
    for s in range(6):
        img = R.negative("smudge4", size, s)
        assert all(d.confidence < geneval.THRESHOLD for d in DET.detect(img))
        assert geneval.detect(img, DET) == {}


def test_confidence_separates_objects_from_non_objects():
    r = Renderer(64)
    cs = [c for t in ("two_object", "counting") for c in R.cases(t, 6, seed=31)]
    true = [d.confidence for c in cs for d in DET.detect(degrade(r.paint(c.state, c.seed), "down2", c.seed))]
    assert np.mean(np.array(true) > geneval.COUNTING_THRESHOLD) >= 0.95
    halves = [d.confidence for s in range(12) for d in DET.detect(R.negative("half", 64, s))]
    blobs = [d.confidence for s in range(12) for d in DET.detect(R.negative("blob", 64, s))]
    assert np.median(halves) < 0.9 and np.median(blobs) < 0.9
    assert np.mean(true) > np.mean(halves) + 0.2 and np.mean(true) > np.mean(blobs) + 0.2


def _det(shape, conf, x=10.0):
    return Detection(shape, "red", "small", 1, 1, x, 16.0, 3.0, 0.0, 20.0, 0.0, conf)


def test_geneval_thresholds_mirror_evaluate_images():
    dets = [_det("star", 0.95), _det("star", 0.85, 20.0), _det("circle", 0.3), _det("circle", 0.31, 5.0)]
    plain = geneval.boxes(dets, tag="two_object")
    assert [b.confidence for b in plain["star"]] == [0.95, 0.85]
    assert [b.confidence for b in plain["circle"]] == [0.31]             # strictly above 0.3
    counting = geneval.boxes(dets, tag="counting")
    assert list(counting) == ["star"] and len(counting["star"]) == 1     # above 0.9 for counting
    many = geneval.boxes([_det("square", 0.5 + i / 100, float(i)) for i in range(20)])
    assert len(many["square"]) == geneval.MAX_OBJECTS == 16
    assert many["square"][0].confidence == 0.69                          # most confident kept first
    assert geneval.boxes(dets, 0.9, tag="counting") == geneval.boxes(dets, 0.9)


def test_empty_and_flat_images():
    assert DET.detect(np.full((64, 64, 3), BACKGROUND, np.uint8)) == []
    assert DET.detect(degrade(np.full((48, 48, 3), BACKGROUND, np.uint8), "noise10", 3)) == []
