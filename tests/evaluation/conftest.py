"""Shared helpers: oracle renders of a benchmark's scene graphs."""

from __future__ import annotations

import numpy as np
import pytest

from procpaint.evaluation.geneval import spec_from_json
from procpaint.world import Renderer, realize


def oracle_image(meta: dict, seed: int, renderer: Renderer | None = None) -> np.ndarray:
    """The ground-truth render of a metadata line's scene graph: (32, 32, 3) uint8."""
    state = realize(spec_from_json(meta["spec"]), np.random.default_rng(seed))
    return (renderer or Renderer(32)).paint(state, seed)


@pytest.fixture(scope="session")           # a pure function: module-scoped fixtures may use it
def oracle():
    return oracle_image
