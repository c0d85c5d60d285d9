"""A tiny ``transformers.Qwen2ForCausalLM`` (random weights, built from a config) mapped into the
understanding expert gives Qwen2's logits on text-only packs: pins RoPE (base, rotate-half layout,
per-sample positions), q/k/v biases, GQA, tied and untied heads and the pack's sample isolation.
Tolerance: twice torch's own fp32 error against an fp64 run of the same Qwen2."""

from __future__ import annotations

import pytest
import torch

from procpaint.model import build_model, model_config
from procpaint.model.bagel_io import load_qwen2_state_dict

transformers = pytest.importorskip("transformers")

VOCAB = 40       # conftest's pack vocabulary
SPEC = [[("text", 13, True)], [("text", 6, True), ("text", 9, True)], [("text", 1, True)]]


def tiny_qwen2(tie: bool, seed: int = 0):
    cfg = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   rms_norm_eps=1e-6,
                                   rope_theta=1e6, tie_word_embeddings=tie, max_position_embeddings=64,
                                   attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():                     # non-trivial biases and norms (init has 0 / 1)
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def ours_for(hf, *, mot: bool):
    c = hf.config
    cfg = model_config("debug", vocab_size=VOCAB, hidden_size=c.hidden_size, num_layers=c.num_hidden_layers,
                       num_heads=c.num_attention_heads, num_kv_heads=c.num_key_value_heads,
                       intermediate_size=c.intermediate_size, rope_theta=1e6, rms_norm_eps=c.rms_norm_eps,
                       qkv_bias=True, qk_norm=False, tie_word_embeddings=c.tie_word_embeddings, mot=mot,
                       attn_backend="sdpa")
    model = build_model(cfg).eval()
    load_qwen2_state_dict(model, hf.state_dict())
    return model


def text_logits(model, batch) -> torch.Tensor:
    """Logits (L, V) at every position of a text-only pack."""
    routing, attn = model.prepare(batch)
    empty = torch.zeros(0, dtype=torch.int64)
    hidden = model.embed(model.embed_text(batch.text_ids), batch.text_indexes,
                         torch.zeros(0, model.cfg.hidden_size), empty, batch.seq_len)
    out, _ = model.forward_hidden(hidden, batch.position_ids, routing, attn)
    return model.lm_head(out)


def hf_logits(hf, batch, dtype) -> torch.Tensor:
    """Qwen2 run on each sample of the pack separately (positions from 0), concatenated."""
    hf = hf.to(dtype)
    out, start = [], 0
    with torch.no_grad():
        for n in batch.sample_lens[: batch.num_samples]:          # padding is its own sample
            ids = batch.text_ids[start:start + n][None]
            out.append(hf(input_ids=ids).logits[0].float())
            start += n
    return torch.cat(out)


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("mot", [False, True])
def test_qwen2_logits_match(tie, mot, make_pack, make_images):
    hf = tiny_qwen2(tie)
    batch = make_pack(SPEC, make_images(0), pad=3)
    ours = ours_for(hf, mot=mot)
    with torch.no_grad():
        got = text_logits(ours, batch)[: batch.num_real_tokens]
    ref64 = hf_logits(hf, batch, torch.float64)
    ref32 = hf_logits(hf, batch, torch.float32)
    err_torch = (ref32 - ref64).abs().max()
    err_ours = (got - ref64).abs().max()
    assert err_ours <= 2 * err_torch + 1e-6, (err_ours, err_torch)
    assert ref64.abs().max() > 0.1                         # the logits are not trivially small


def test_qwen2_with_qk_norm_model_is_refused():
    hf = tiny_qwen2(True)
    c = hf.config
    cfg = model_config("debug", vocab_size=VOCAB, hidden_size=c.hidden_size, num_layers=2, num_heads=4,
                       num_kv_heads=2, intermediate_size=96, qkv_bias=True, qk_norm=True, mot=False)
    with pytest.raises(ValueError, match="missing key.*q_norm"):
        load_qwen2_state_dict(build_model(cfg), hf.state_dict())
