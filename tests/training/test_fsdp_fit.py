"""train/configs/bagel7b.yaml's code path on CPU: 2 processes (torchrun, gloo) under FSDP2, the model
shrunk to a few layers and started from a tiny BAGEL-format checkpoint (model.init_from). The run
trains, logs sampled trajectories (gathered on rank 0), writes distributed checkpoints, exports the
gathered EMA weights and runs the closing quick eval; train/sample.py then samples from the export."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from procpaint.model import build_model, model_config
from procpaint.model.bagel_io import export_bagel, read_bagel_weights

# Under pytest-xdist (`--dist loadgroup`, the README's test command) this module's tests stay on one
# worker, and the run is session-scoped there: a worker interleaves modules, and a module-scoped
# fixture would be torn down and rerun (a 2-process FSDP fit, ~55 s) between this module's tests.
pytestmark = pytest.mark.xdist_group("fsdp_run")
ROOT = Path(__file__).resolve().parents[2]
SHRINK = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
              timestep_freq_dim=64, codec="pixel", latent_channels=3, latent_downsample=1, patch_size=4,
              attn_backend="sdpa",     # FlexAttention has no CPU backward
              vit=False)               # the ViT path is not in packs yet (docs/ARCHITECTURE.md)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def fsdp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    torch.manual_seed(0)
    base = build_model(model_config("bagel-7b", vocab_size=4096, **SHRINK))   # more rows than the data's
    with torch.no_grad():                                                      # tokenizer: rows are cut
        for p in base.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    bagel = export_bagel(base, tmp / "bagel")
    overrides = [f"model.{k}={v}" for k, v in SHRINK.items()] + [
        f"model.init_from={bagel}", f"data.cache_dir={tmp / 'data'}", "data.image_size=32",
        "data.max_tokens=1024", "data.max_tokens_per_sample=1024", "data.build_samples=60",
        "data.val_samples=8", "data.num_workers=0", "trainer.accelerator=cpu", "trainer.devices=2",
        "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
        f"trainer.default_root_dir={tmp / 'runs'}", "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1", "optim.warmup_steps=1", "logging.checkpoint_every_n_steps=3",
        "logging.trajectory_every_n_steps=2", "sampling.num_steps=2", "logging.final_eval_prompts=1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(ROOT / "train/fit.py"),
           "--config", str(ROOT / "train/configs/bagel7b.yaml"), *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    log_dir = Path(next(line.split(":", 1)[1].split()[0] for line in proc.stdout.splitlines()
                        if line.startswith("TensorBoard logs")))
    return tmp, bagel, log_dir


def test_trains_logs_and_checkpoints_sharded(fsdp_run):
    _, _, log_dir = fsdp_run
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    norm = [e.value for e in acc.Scalars("train/grad_norm")]
    assert sorted(loss) == [0, 1, 2, 3] and all(map(torch.isfinite, torch.tensor(list(loss.values()))))
    assert norm and all(0 < n < 1e3 for n in norm)
    assert {"trajectory/0", "trajectory/1"} <= set(acc.Tags()["images"])   # rank 0, gathered weights
    ckpt = log_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir() and len(list(ckpt.glob("*.distcp"))) == 2        # one shard file per rank
    assert (log_dir / "quick_eval.json").is_file()


def test_export_holds_the_gathered_ema_of_the_loaded_weights(fsdp_run):
    _, bagel, log_dir = fsdp_run
    ex = load_file(str(log_dir / "export" / "model.safetensors"))
    b = read_bagel_weights(bagel)
    pre = "language_model.model.layers.1.self_attn."
    qkv = torch.cat([b[f"{pre}{x}_proj.weight"] for x in "qkv"])
    vocab = ex["embed_tokens.weight"].shape[0]
    # Loaded into the shards, then averaged: AdamW moves the weights ~lr (2e-5) per step, the EMA
    # (decay 0.999) a thousandth of that; a fresh init or a lost shard would differ by ~0.02.
    for ours, theirs in ((ex["layers.1.und.qkv.weight"], qkv),
                         (ex["embed_tokens.weight"], b["language_model.model.embed_tokens.weight"][:vocab])):
        err = float((ours - theirs).abs().max())
        assert 0 < err < 5e-6, err


def test_sample_from_the_export(fsdp_run):
    tmp, _, log_dir = fsdp_run
    cmd = [sys.executable, str(ROOT / "train/sample.py"), "--ckpt", str(log_dir / "export"),
           "--prompt", "a photo of a red circle", "--steps", "2", "--out", str(tmp / "samples")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert any((tmp / "samples").iterdir())
