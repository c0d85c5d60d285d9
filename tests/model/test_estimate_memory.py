"""benchmarks/estimate_memory.py: its activation model agrees with what autograd actually saves for
one MoT decoder layer (measured with saved-tensor hooks, fp32, CPU), and its totals add up."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from procpaint.model import expected_num_parameters, model_config
from procpaint.model.attention import build_attention
from procpaint.model.embeddings import RotaryEmbedding
from procpaint.model.layers import LayerInputs, MoTDecoderLayer, Routing

ROOT = Path(__file__).resolve().parents[2]


def _est():
    spec = importlib.util.spec_from_file_location("estimate_memory", ROOT / "benchmarks/estimate_memory.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod                   # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def saved_elements_per_token(cfg, L: int = 256, n_gen: int = 128) -> float:
    """Elements autograd saves in one layer's forward (parameters and the dense SDPA mask excluded:
    FlexAttention keeps no L x L mask)."""
    layer = MoTDecoderLayer(cfg, 0)
    routing = Routing.build(torch.arange(L - n_gen), torch.arange(L - n_gen, L), L, True)
    attn = build_attention("sdpa", [L - n_gen, n_gen], ["causal", "full"], [L], device=torch.device("cpu"),
                           dtype=torch.float32, num_real_tokens=L)
    cos, sin = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)(torch.arange(L), torch.float32)
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and t.numel() != L * L:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(L, cfg.hidden_size, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x, LayerInputs(routing, cos, sin, attn))
    return sum(seen.values()) / 4 / L


@pytest.mark.parametrize("d,f,h,hkv", [(128, 384, 4, 2), (128, 768, 4, 2), (256, 384, 8, 4)])
def test_activation_model_matches_autograd(d, f, h, hkv):
    cfg = model_config("debug", vocab_size=100, hidden_size=d, intermediate_size=f, num_heads=h,
                       num_kv_heads=hkv, attn_backend="sdpa")
    model = _est().activation_elements_per_token_layer(cfg)
    assert model == pytest.approx(saved_elements_per_token(cfg), rel=0.10)


def test_bagel_7b_estimate_adds_up():
    est = _est()
    cfg = model_config("bagel-7b", vocab_size=152_064)
    e = est.estimate(cfg, gpus=8, tokens=33_000)
    p = expected_num_parameters(cfg)
    assert e.params == p and 14.4e9 < p < 14.8e9     # two Qwen2-7B experts + shared embeddings + SigLIP
    assert e.weights_gb + e.grads_gb + e.adam_gb + e.ema_gb == pytest.approx(20 * p / 8 / 1e9)
    # why the recipe checkpoints activations
    assert e.total(checkpointing=True) < 0.9 * 80 < e.total(checkpointing=False)
    assert est.main(["--gpus", "8"]) == 0
