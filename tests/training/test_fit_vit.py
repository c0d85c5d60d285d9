"""`train/fit.py` with the ViT understanding path (model.vit=true, tiny ViT sizes, issue 13): two steps
at debug scale, packs carry ViT splits (the ViT and connector train), the closing eval generates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TINY_VIT = ["model.vit=true", "model.vit_hidden_size=32", "model.vit_num_layers=1", "model.vit_num_heads=2",
            "model.vit_intermediate_size=64", "model.vit_patch_size=4", "model.vit_max_patches_per_side=16"]


def test_fit_two_steps_with_the_vit(tmp_path):
    args = [f"trainer.default_root_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'data'}",
            "trainer.max_steps=2", "data.max_tokens=2048", "logging.final_eval_prompts=1", *TINY_VIT]
    proc = subprocess.run([sys.executable, str(ROOT / "train/fit.py"), "--config",
                           str(ROOT / "train/configs/debug.yaml"), *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    export = next((tmp_path / "runs").glob("*/version_*/export/model.safetensors"))
    sd = load_file(export)
    for key in ("vit.patch_embed.bias", "vit.layers.0.fc2.bias", "connector.fc2.bias"):
        # zero at init: only a gradient through packed ViT tokens moves them
        assert sd[key].abs().max() > 0, f"{key} never trained: no ViT tokens in the packs?"
