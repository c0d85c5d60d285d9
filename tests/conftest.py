"""Shared test setup: the `cuda` marker, deterministic seeding, hypothesis profiles, and the
`native` fixture that guards kernel-vs-reference tests."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

from procpaint import _ext

# `ci`: bounded, fast enough for the CI budget; `dev`: thorough (HYPOTHESIS_PROFILE=dev pytest ...).
settings.register_profile(
    "ci", max_examples=40, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", max_examples=500, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA = torch.cuda.is_available()

# Under pytest-xdist (`-n 2`, the README's test command) each worker runs one torch thread, and the
# processes tests start inherit that: two workers on two cores, not four threads fighting for them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m cuda` on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same RNG state, whatever ran before it."""
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002  (code under test may use the legacy global RNG)
    torch.manual_seed(0)
    yield


@pytest.fixture
def native():
    """The native extension module. Kernel tests take this fixture: with PROCPAINT_REQUIRE_EXT=1
    (CI) a missing or stale build is a failure, elsewhere a skip that says why."""
    if os.environ.get("PROCPAINT_REQUIRE_EXT", "0") == "1":
        _ext.require()
    elif not _ext.available():
        pytest.skip(f"procpaint._C unavailable: {_ext.unavailable_reason()}")
    return _ext.load()


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    return torch.device(request.param)
