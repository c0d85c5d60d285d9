"""LightningModule pieces that need no trainer: schedule, configure_model's apply_* steps, and the
non-finite-loss policy."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from procpaint.config import load_config
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


def test_nonfinite_gradients_skip_the_update_then_stop():
    """A NaN loss or gradient applies no update (grads dropped before the optimizer); after
    loss.max_nonfinite_steps in a row training stops."""
    module = _module("loss.max_nonfinite_steps=3")
    opt = module.configure_optimizers()["optimizer"]
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # self.log outside a Trainer warns
        for step in range(3):
            for p in module.parameters():
                p.grad = torch.ones_like(p)
            next(module.parameters()).grad[0] = math.nan
            if step < 2:
                module.on_before_optimizer_step(opt)
                opt.step()
            else:
                with pytest.raises(NonFiniteLossError, match="max_nonfinite_steps=3"):
                    module.on_before_optimizer_step(opt)
    for k, v in module.model.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=f"{k} was updated by a non-finite step")


def test_nonfinite_loss_on_any_rank_skips_even_with_finite_gradients():
    """The loss's all-reduced flag, not the gradients, decides: a rank whose own loss was finite
    backpropagates a zero (finite gradients) and must still skip, like the rank that saw the NaN."""
    module = _module("loss.max_nonfinite_steps=2")
    opt = module.configure_optimizers()["optimizer"]
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # self.log outside a Trainer warns
        for p in module.parameters():
            p.grad = torch.zeros_like(p)
        module._loss_nonfinite = 1                   # what training_step keeps from LossParts
        module.on_before_optimizer_step(opt)
        assert all(p.grad is None for p in module.parameters())
        assert module._skipped_steps == 1 and module._nonfinite == 1 and module._loss_nonfinite == 0
        opt.step()
        for p in module.parameters():                # the next step is clean: counted, not skipped
            p.grad = torch.ones_like(p)
        module.on_before_optimizer_step(opt)
        assert all(p.grad is not None for p in module.parameters())
        assert module._skipped_steps == 1 and module._nonfinite == 0
    for k, v in module.model.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=f"{k} was updated by a skipped step")


def test_update_that_makes_weights_nonfinite_stops_training():
    module = _module()

    class Overflowing:
        def step(self, closure=None):
            with torch.no_grad():
                next(module.parameters()).fill_(math.inf)

    with pytest.raises(NonFiniteLossError, match="made weights non-finite"):
        module.optimizer_step(0, 0, Overflowing(), None)


def test_checkpoint_and_export_refuse_nonfinite_weights(tmp_path):
    from procpaint.training.run import export_weights

    module = _module()
    export = tmp_path / "export"
    export_weights(module, export)
    good = (export / "model.safetensors").read_bytes()
    state = {f"model.{k}": v for k, v in module.model.state_dict().items()}
    module.on_save_checkpoint({"state_dict": state, "global_step": 3})        # finite: accepted
    with torch.no_grad():
        next(module.parameters())[0] = math.nan
    nan_state = {f"model.{k}": v for k, v in module.model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="refusing to write a checkpoint at step 6"):
        module.on_save_checkpoint({"state_dict": nan_state, "global_step": 6})
    with pytest.raises(NonFiniteLossError, match="refusing to write a checkpoint"):
        module.on_save_checkpoint({"state_dict": state, "current_model_state": nan_state, "global_step": 6})
    with pytest.raises(NonFiniteLossError, match="refusing to write an export"):
        export_weights(module, export)
    assert (export / "model.safetensors").read_bytes() == good              # the earlier export stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]         # nothing half-written beside


def test_export_interrupted_leaves_no_half_export(tmp_path, monkeypatch):
    """An export dying mid-write (disk full, kill) never leaves a partial folder under the final name."""
    import safetensors.torch

    from procpaint.training.run import export_weights

    module = _module()

    def dies(state, path, metadata=None):
        Path(path).write_bytes(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", dies)
    with pytest.raises(OSError):
        export_weights(module, tmp_path / "export")
    assert list(tmp_path.iterdir()) == []             # the temporary folder is cleaned up too


def test_data_cache_key_follows_build_knobs_and_vocabulary(monkeypatch):
    """A changed knob or tokenizer vocabulary gives a new cache folder; an unchanged config the same."""
    from procpaint.datasets import store
    from procpaint.training.datamodule import ProcPaintDataModule

    def root(*overrides):
        return ProcPaintDataModule(load_config(DEBUG, list(overrides))).root

    base = root()
    assert root() == base and base.parent == Path("data_cache/debug")
    assert root("data.build_samples=61") != base and root("seed=1") != base
    assert root("data.fact_share=0.0") != base and root("data.knowledge_share=0.2") != base
    words = store.dataset_vocabulary()
    monkeypatch.setattr(store, "dataset_vocabulary", lambda: [*words, "zebra"])
    assert root() != base


def test_build_knobs_reach_the_procedural_builder(monkeypatch, tmp_path):
    """data.fact_share / knowledge_share / layout are handed to BuildConfig; unset keeps its defaults."""
    import procpaint.datasets as datasets
    from procpaint.training.datamodule import ProcPaintDataModule

    seen = []
    monkeypatch.setattr(datasets, "build_dataset", lambda out, **kw: seen.append(kw["cfg"]))
    ProcPaintDataModule(load_config(DEBUG, ["data.fact_share=0.0", "data.layout=canonical"]))._build(
        tmp_path, 40, 0)
    ProcPaintDataModule(load_config(DEBUG))._build(tmp_path, 40, 0)
    assert (seen[0].fact_share, seen[0].layout) == (0.0, "canonical")
    assert seen[1].fact_share == datasets.BuildConfig().fact_share == 0.1
    assert seen[0].knowledge_share == seen[1].knowledge_share == datasets.BuildConfig().knowledge_share
