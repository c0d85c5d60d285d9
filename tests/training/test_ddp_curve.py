"""2-process DDP (gloo, CPU) against one process on the same global batch, step by step: the loss, CE
and MSE curves of 20 AdamW steps of the `debug` preset agree to float rounding
(tests/training/ddp_curve_worker.py). The ranks hold different numbers of tokens, so this holds only
if the per-token means are global (training/losses.py) and DDP's gradient average is what it should
be."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ddp_curve_worker import STEPS, debug_config  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_loss_curve_matches_one_process_on_the_global_batch(tmp_path):
    from procpaint.training.datamodule import ProcPaintDataModule

    cache = tmp_path / "data"
    ProcPaintDataModule(debug_config(cache)).prepare_data()        # built once, read by every run
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1])}
    worker = str(HERE / "ddp_curve_worker.py")
    runs = {"ddp": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", str(_free_port()), worker, str(cache), str(tmp_path / "ddp.json")],
            "single": [sys.executable, worker, str(cache), str(tmp_path / "single.json"), "--single"]}
    for name, cmd in runs.items():
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, name + ": " + proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp, single = (json.loads((tmp_path / f"{name}.json").read_text()) for name in runs)
    assert len(ddp) == len(single) == STEPS
    for d, s in zip(ddp, single):
        for key in ("loss", "ce", "mse"):
            assert d[key] == pytest.approx(s[key], rel=1e-5), (d["step"], key, d[key], s[key])
    assert single[-1]["loss"] < 0.8 * single[0]["loss"]              # it trained: the curve is not flat
