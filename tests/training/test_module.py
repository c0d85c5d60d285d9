"""LightningModule pieces that need no trainer: schedule, configure_model's apply_* steps, and the
non-finite-loss policy."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from procpaint.config import load_config
from procpaint.training.losses import LossParts
from procpaint.training.module import NonFiniteLossError, ProcPaintModule, lr_lambda

DEBUG = Path(__file__).resolve().parents[2] / "train/configs/debug.yaml"


def _module(*overrides) -> ProcPaintModule:
    module = ProcPaintModule.from_config(load_config(DEBUG, list(overrides)), vocab_size=50)
    module.configure_model()
    return module


def test_lr_schedule_warmup_then_cosine_to_floor():
    f = lambda s, sched="cosine": lr_lambda(s, warmup=10, total=110, schedule=sched, min_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 110))
    assert f(80, "constant") == 1.0


def test_configure_model_applies_checkpointing_and_compile():
    plain = _module()
    wrapped = _module("parallel.activation_checkpointing=1", "parallel.compile=true")
    assert all("CheckpointWrapper" in type(layer).__name__ for layer in wrapped.model.layers)
    assert all(getattr(layer, "_compiled_call_impl", None) is not None for layer in wrapped.model.layers)
    # Same parameter names either way: checkpoints move between the two.
    assert plain.model.state_dict().keys() == wrapped.model.state_dict().keys()
    wrapped.configure_model()                        # idempotent (Lightning may call it again)
    assert wrapped.model is not None


def test_nonfinite_losses_skip_then_stop(monkeypatch):
    module = _module("loss.max_nonfinite_steps=3")
    nan = torch.tensor(math.nan)
    parts = LossParts(loss=nan, ce=nan, mse=nan, ce_tokens=1, mse_tokens=1)
    monkeypatch.setattr(module, "_shared_step", lambda batch, stage: parts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # self.log outside a Trainer warns
        assert module.training_step(None, 0) is None  # skipped, not raised
        assert module.training_step(None, 1) is None
        with pytest.raises(NonFiniteLossError, match="max_nonfinite_steps=3"):
            module.training_step(None, 2)


def test_data_cache_key_follows_build_knobs_and_vocabulary(monkeypatch):
    """A changed knob or tokenizer vocabulary gives a new cache folder; an unchanged config the same."""
    from procpaint.datasets import store
    from procpaint.training.datamodule import ProcPaintDataModule

    def root(*overrides):
        return ProcPaintDataModule(load_config(DEBUG, list(overrides))).root

    base = root()
    assert root() == base and base.parent == Path("data_cache/debug")
    assert root("data.build_samples=61") != base and root("seed=1") != base
    words = store.dataset_vocabulary()
    monkeypatch.setattr(store, "dataset_vocabulary", lambda: [*words, "zebra"])
    assert root() != base
