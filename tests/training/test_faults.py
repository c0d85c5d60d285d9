"""Fault injection on real training runs (debug preset): NaN gradients on one process or on one of
two DDP ranks stop the update everywhere and never reach a checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch

from procpaint.config import load_config
from procpaint.training.module import NonFiniteLossError
from procpaint.training.run import fit

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "train/configs/debug.yaml"


def _overrides(tmp_path):
    return [f"trainer.default_root_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path.parent / 'data_cache'}",
            "logging.trajectory_every_n_steps=0", "logging.final_eval_prompts=0"]


def _finite(ckpt: Path) -> bool:
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    return all(bool(torch.isfinite(v).all()) for key in ("state_dict", "current_model_state")
               for v in ck.get(key, {}).values() if v.is_floating_point())


class _NaNGrads(L.Callback):
    """From step ``start`` on, a NaN in one gradient (as an overflowing backward would leave)."""

    def __init__(self, start: int):
        self.start = start

    def on_after_backward(self, trainer, module):
        if trainer.global_step >= self.start:
            next(p for p in module.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")


def test_nan_gradients_never_reach_a_checkpoint(tmp_path):
    cfg = load_config(DEBUG, [*_overrides(tmp_path), "trainer.max_steps=6", "loss.max_nonfinite_steps=3"])
    with pytest.raises(NonFiniteLossError, match="3 consecutive non-finite"):
        fit(cfg, extra_callbacks=[_NaNGrads(start=1)])
    ckpts = sorted((tmp_path / "runs").rglob("*.ckpt"))
    assert [p.name for p in ckpts] == ["last.ckpt", "step000003.ckpt"]
    assert all(_finite(p) for p in ckpts)
    assert not list((tmp_path / "runs").rglob("export"))          # no export of a failed run


DDP_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from procpaint.training import module as M

_step = M.ProcPaintModule._shared_step

def _shared_step(self, batch, stage):   # rank 1 alone: a NaN loss from step 1 on
    parts = _step(self, batch, stage)
    if stage == "train" and self.global_rank == 1 and self.global_step >= 1:
        parts.loss = parts.loss * float("nan")
    return parts

M.ProcPaintModule._shared_step = _shared_step
sys.path.insert(0, {train!r})
import fit
sys.exit(fit.main(sys.argv[1:]))
"""


def test_ddp_nan_on_one_rank_stops_both_ranks_cleanly(tmp_path):
    script = tmp_path / "fit_nan_rank1.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(root=str(ROOT), train=str(ROOT / "train"))))
    args = [*_overrides(tmp_path), "trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
            "trainer.max_steps=6", "loss.max_nonfinite_steps=3"]
    proc = subprocess.run([sys.executable, str(script), "--config", str(DEBUG), *args], capture_output=True,
                          text=True, timeout=600, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "training stopped: 3 consecutive non-finite" in proc.stderr
    ckpts = sorted((tmp_path / "runs").rglob("*.ckpt"))
    assert [p.name for p in ckpts] == ["last.ckpt", "step000003.ckpt"] and all(_finite(p) for p in ckpts)
