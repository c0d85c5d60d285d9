"""Presets build, parameter counts (closed form, Qwen2-7B, BAGEL-7B-MoT on the meta device), FLOPs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from procpaint.model import (
    ProcPaintModel,
    build_model,
    expected_num_parameters,
    flops_per_token,
    model_config,
    num_parameters,
)
from procpaint.model.factory import expert_layer_parameters, vit_parameters

QWEN2_7B_PARAMS = 7_615_616_512        # Qwen2-7B's published parameter count


@pytest.mark.parametrize("preset", ["debug", "small"])
def test_presets_build_on_cpu(preset):
    cfg = model_config(preset, vocab_size=64)
    model = build_model(cfg)
    assert num_parameters(model) == expected_num_parameters(cfg)
    assert model.llm2vae.weight.abs().sum() == 0
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_base_preset_shapes_on_meta():
    """The GPU research preset (~0.4B parameters): its shapes and count; initialising it on the CPU
    (the same reset_parameters the two presets above run) took ~20 s of the suite for nothing new."""
    cfg = model_config("base", vocab_size=64)
    model = build_model(cfg, device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert num_parameters(model) == expected_num_parameters(cfg)


def test_bagel_7b_on_meta_device():
    cfg = model_config("bagel-7b")
    model = build_model(cfg, device="meta")
    assert all(p.is_meta for p in model.parameters())
    n = num_parameters(model)
    assert n == expected_num_parameters(cfg)
    # MoT duplicates every per-layer weight of Qwen2-7B: ~7.6B + ~6.5B = ~14.2B (BAGEL's "14B total"),
    # plus the SigLIP understanding path (~0.42B with its connector).
    n -= vit_parameters(cfg)
    assert 14.0e9 < n < 14.3e9
    # Dense variant minus what BAGEL adds to Qwen2 (latent in/out, timestep MLP, q/k norms) is Qwen2-7B.
    dense = dataclasses.replace(cfg, mot=False, vit=False)
    d, dl, fd = cfg.hidden_size, cfg.latent_dim, cfg.timestep_freq_dim
    added = (dl * d + d) + (d * dl + dl) + (fd * d + d) + (d * d + d) + cfg.num_layers * 2 * cfg.head_dim
    assert expected_num_parameters(dense) - added == QWEN2_7B_PARAMS
    # Active per token ~ half of the per-layer weights, as BAGEL's "7B active".
    active = n - cfg.num_layers * expert_layer_parameters(cfg) - d
    assert 7.5e9 < active < 7.7e9


def test_meta_model_materialises_with_init_weights():
    cfg = model_config("debug", vocab_size=32)
    model = build_model(cfg, device="meta")
    model.to_empty(device="cpu")
    model.init_weights()
    ref = build_model(cfg)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.isfinite(p).all(), name
        assert p.std().item() == pytest.approx(q.std().item(), rel=0.5, abs=1e-6), name


def test_num_parameters_options():
    tied = model_config("debug", vocab_size=100)
    untied = dataclasses.replace(tied, tie_word_embeddings=False)
    a, b = build_model(tied), build_model(untied)
    assert num_parameters(b) - num_parameters(a) == 100 * tied.hidden_size
    assert num_parameters(a, exclude_embeddings=True) == num_parameters(b, exclude_embeddings=True)
    a.embed_tokens.weight.requires_grad_(False)
    assert num_parameters(a, trainable_only=True) == num_parameters(a) - 100 * tied.hidden_size


def test_flops_per_token():
    cfg = model_config("bagel-7b")
    f = flops_per_token(cfg, context_len=0, lm_head_fraction=0.0)
    # 6 * (one expert's matmul weights) per token when attention is negligible
    per_layer = expert_layer_parameters(cfg) - 2 * cfg.hidden_size - 2 * cfg.head_dim
    assert f == 6 * cfg.num_layers * per_layer
    with_attn = flops_per_token(cfg, context_len=4096, lm_head_fraction=0.0)
    assert with_attn - f == 6 * 2 * cfg.num_layers * cfg.hidden_size * 4096
    assert flops_per_token(cfg, 4096, training=False) * 3 == flops_per_token(cfg, 4096)


def test_vocab_size_required():
    with pytest.raises(ValueError, match="vocab_size"):
        ProcPaintModel(model_config("debug"))
