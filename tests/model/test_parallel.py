"""FSDP2 sharding on CPU (2 processes, gloo): the model is created on the meta device and sharded
per decoder layer, a BAGEL-format checkpoint is loaded into the shards, and loss, gradients, the
global gradient norm and one AdamW step equal the unsharded model's (tests/model/fsdp_worker.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from procpaint.model import build_model, model_config
from procpaint.model.parallel import global_grad_norm, is_sharded, local

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp_two_ranks_equal_unsharded(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(HERE / "fsdp_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["local_params"] <= r["total_params"] // 2 + 64          # each rank holds half (+ padding)
    assert r["losses"][0] == pytest.approx(r["losses"][1], rel=1e-6)
    assert r["grad_norms"][0] == pytest.approx(r["grad_norms"][1], rel=1e-5)
    assert r["max_grad_err"] < 1e-6 and r["max_step_err"] < 1e-6
    assert not r["init"]["rows_repeat"] and r["init"]["std"] == pytest.approx(0.02, rel=0.2)
    v = r["vit"]                                                      # per-layer units for the ViT too
    assert v["vit_layers"] >= 1 and v["vit_units"] == v["vit_layers"] and v["decoder_units"] >= 2
    assert v["unsharded"] == []


def test_single_process_helpers():
    model = build_model(model_config("debug", vocab_size=40))
    assert not is_sharded(model)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
        assert local(p) is p
    n = sum(p.numel() for p in model.parameters())
    assert float(global_grad_norm(model.parameters())) == pytest.approx(0.5 * n ** 0.5, rel=1e-5)
    next(model.parameters()).grad[0] = float("nan")
    assert not torch.isfinite(global_grad_norm(model.parameters()))
