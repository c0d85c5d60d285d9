"""Attention backends: sdpa against a naive masked softmax, flex against sdpa (forward, CPU), the
flash fit rules, contexts from explicit masks, and backend resolution."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from procpaint.model import build_model
from procpaint.model.attention import (
    AttnContext,
    _flash_layout,
    attend,
    build_attention,
    resolve_backend,
)


def _layout():
    """Two samples mixing every mode, then a one-token padding sample."""
    splits = [7, 20, 20, 3, 9, 5, 30, 1]
    modes = ["causal", "noise", "full", "causal", "full", "causal", "noise", "causal"]
    return splits, modes, [50, 44, 1]


def _naive(q, k, v, mask):
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    s = torch.einsum("qhd,khd->hqk", q.double(), k.double()) / q.shape[-1] ** 0.5
    return torch.einsum("hqk,khd->qhd", s.masked_fill(~mask, float("-inf")).softmax(-1), v.double())


def _qkv(L, h=4, hkv=2, hd=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(L, h, hd, generator=g), torch.randn(L, hkv, hd, generator=g),
            torch.randn(L, hkv, hd, generator=g))


def test_kernel_mask_is_the_design_rule(ref_mask):
    splits, modes, samples = _layout()
    ctx = build_attention("sdpa", splits, modes, samples, device="cpu")
    assert torch.equal(ctx.dense_mask(), ref_mask(splits, modes, samples))
    assert ctx.blocks[-1][-1] is None                                       # causal padding: no tensor


def test_sdpa_groups_many_small_samples_and_keeps_the_rule(ref_mask):
    # 60 single-pass-like samples (prompt, noised image) and causal padding: a few diagonal blocks
    # of ~SDPA_GROUP_TOKENS tokens instead of 61, the mask still exactly the design rule.
    splits, modes = [], []
    for i in range(60):
        splits += [5 + i % 4, 16]
        modes += ["causal", "noise"]
    samples = [splits[2 * i] + splits[2 * i + 1] for i in range(60)] + [7]
    splits.append(7)
    modes.append("causal")
    ctx = build_attention("sdpa", splits, modes, samples, device="cpu")
    assert len(ctx.blocks) < 10
    assert torch.equal(ctx.dense_mask(), ref_mask(splits, modes, samples))
    assert ctx.blocks[-1][-1] is None
    q, k, v = _qkv(sum(splits))
    want = _naive(q, k, v, ref_mask(splits, modes, samples))
    torch.testing.assert_close(attend(q, k, v, ctx).double(), want, atol=1e-5, rtol=1e-5)


def test_sdpa_matches_naive_masked_softmax(ref_mask):
    splits, modes, samples = _layout()
    L = sum(splits)
    q, k, v = _qkv(L)
    out = attend(q, k, v, build_attention("sdpa", splits, modes, samples, device="cpu"))
    want = _naive(q, k, v, ref_mask(splits, modes, samples))
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("L_extra", [0, 61])  # 61: awkward length, partial FlexAttention blocks
def test_flex_matches_sdpa_forward(L_extra):
    splits, modes, samples = _layout()
    if L_extra:
        splits, modes, samples = [*splits, L_extra], [*modes, "full"], [*samples, L_extra]
    L = sum(splits)
    q, k, v = _qkv(L, seed=1)
    with torch.no_grad():                                                 # flex has no CPU backward
        a = attend(q, k, v, build_attention("sdpa", splits, modes, samples, device="cpu"))
        b = attend(q, k, v, build_attention("flex", splits, modes, samples, device="cpu"))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_model_backends_agree(debug_cfg, pack):
    model = build_model(debug_cfg)
    torch.nn.init.normal_(model.llm2vae.weight, std=0.02)
    noise = torch.randn(int(pack.latent_noised.sum()), debug_cfg.latent_dim)
    with torch.no_grad():
        ref = model(pack, noise=noise)
        model.attn_backend = "flex"
        out = model(pack, noise=noise)
    torch.testing.assert_close(out.ce_logits, ref.ce_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.v_pred, ref.v_pred, atol=1e-5, rtol=1e-5)


def test_context_from_dense_mask():
    q, k, v = _qkv(5, seed=2)
    k2, v2 = torch.cat([k, k[:3]]), torch.cat([v, v[:3]])                # 3 "cached" + 5 keys
    mask = torch.ones(5, 8, dtype=torch.bool)
    mask[:, 5:] = False
    out = attend(q, k2, v2, AttnContext.from_dense(mask))
    torch.testing.assert_close(out.double(), _naive(q, k2, v2, mask), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="queries x"):
        attend(q, k, v, AttnContext.from_dense(mask))


def test_flash_layout_fits_only_single_mode_samples():
    assert _flash_layout([3, 4, 5], ["causal"] * 3, [7, 5], None) == (True, [7, 5])
    assert _flash_layout([6, 9], ["full", "noise"], [6, 9], None) == (False, [6, 9])
    # a full-mode padding sample does not spoil an all-causal pack
    assert _flash_layout([3, 4, 5], ["causal", "causal", "full"], [7, 5], 7)[0] is True
    with pytest.raises(NotImplementedError, match="one mode per call"):
        _flash_layout([3, 4], ["causal", "full"], [7], None)
    with pytest.raises(NotImplementedError, match="mixes causal samples and full"):
        _flash_layout([3, 4], ["causal", "full"], [3, 4], None)


def test_backend_resolution_on_cpu():
    assert resolve_backend("auto", "cpu") == "sdpa"
    assert resolve_backend("flex", "cpu") == "flex"
    for name in ("xformers", "flash"):
        with pytest.raises(RuntimeError, match="not available on cpu"):
            resolve_backend(name, "cpu")
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("magic", "cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["flex", "xformers", "flash"])
def test_gpu_backends_match_sdpa(backend, ref_mask):
    module = {"flex": "torch", "xformers": "xformers", "flash": "flash_attn"}[backend]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{backend} not installed")
    if backend == "flash":
        splits, modes, samples = [40, 30, 58], ["causal"] * 3, [70, 58]
    else:
        splits, modes, samples = _layout()
    L = sum(splits)
    q, k, v = (x.cuda().bfloat16() for x in _qkv(L, seed=3))
    want = _naive(q.float().cpu(), k.float().cpu(), v.float().cpu(), ref_mask(splits, modes, samples))
    ctx = build_attention(backend, splits, modes, samples, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        got = attend(q, k, v, ctx).float().cpu().double()
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
