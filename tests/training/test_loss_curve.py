"""The debug preset's loss curve reproduces the stored baseline step by step (torchtitan keeps such
baselines): any change to the numerics of data, model, loss or optimizer shows here. After an
intended change, regenerate it with ``python tests/training/loss_curve.py`` and commit the JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loss_curve import BASELINE, KEYS, STEPS, debug_curve  # noqa: E402

pytestmark = pytest.mark.slow


def test_debug_loss_curve_reproduces_the_stored_baseline(tmp_path):
    stored = json.loads(BASELINE.read_text())["steps"]
    assert len(stored) == STEPS
    curve = debug_curve(tmp_path)
    assert [c["step"] for c in curve] == [s["step"] for s in stored]
    for got, want in zip(curve, stored):
        for key in KEYS:
            if want[key] is None:                     # a step without that part stays without it
                assert got[key] is None, (got["step"], key, got[key])
                continue
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (
                f"step {got['step']} {key}: {got[key]} != stored {want[key]} (an intended numerics change? "
                f"regenerate: python tests/training/loss_curve.py)")
    assert stored[-1]["loss"] < stored[0]["loss"]          # the baseline itself is a training curve
