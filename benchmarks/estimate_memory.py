"""Memory and throughput per GPU of a FSDP run (README "Fine-tune BAGEL-7B"), from the model's
parameter count and FLOPs (procpaint.model.factory) and an activation model measured on CPU.

    python benchmarks/estimate_memory.py                      # bagel-7b, 8 GPUs, 33K-token packs
    python benchmarks/estimate_memory.py --gpus 16 --tokens 16384 --gpu-mem-gb 141 --peak-tflops 989

Memory per GPU (FSDP full shard over N GPUs, bf16 compute, fp32 master weights):
    weights fp32 4P/N + gradients fp32 4P/N + AdamW (m, v) 8P/N + sharded EMA fp32 4P/N
    + gathered bf16 weights of two decoder layers (the one running and the one prefetched)
    + activations: without checkpointing every layer keeps its saved tensors; with it, each layer
      keeps only its input (L x D bf16) and one layer at a time is recomputed
    + logits: LM head on the CE positions only (bf16 logits + their fp32 copy for the loss).
Saved tensors per token per decoder layer ~ 11 D + 4 F + 6 kv elements (one expert per token:
pre-norms, q|k|v, q/k norms, RoPE, the routed-order copies, attention output, SwiGLU), plus
fp32 copies of the RMSNorm inputs in bf16 (3 D + kv more bytes x 2). The element count is checked
against torch's saved-tensor hooks on CPU in tests/model/test_estimate_memory.py (within 10%).

Throughput: tokens/s/GPU = MFU x peak / (FLOPs per token), with FLOPs from
``flops_per_token`` (6 x one expert's weights + attention over the mean context) and x 4/3 when
activations are recomputed. MFU is an assumption (printed), not a measurement.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from procpaint.model import expected_num_parameters, flops_per_token, model_config  # noqa: E402
from procpaint.model.factory import expert_layer_parameters  # noqa: E402

GB = 1e9


def activation_elements_per_token_layer(cfg) -> float:
    """Saved-for-backward elements per token of one decoder layer (one expert per token)."""
    kv = cfg.num_kv_heads * cfg.head_dim
    return 11 * cfg.hidden_size + 4 * cfg.intermediate_size + 6 * kv


@dataclass
class Estimate:
    params: int               # distinct parameters (both experts)
    weights_gb: float         # fp32 shard
    grads_gb: float
    adam_gb: float
    ema_gb: float
    gathered_gb: float        # bf16 weights of 2 decoder layers, whole
    act_full_gb: float        # activations without checkpointing
    act_ckpt_gb: float        # with per-layer activation checkpointing
    logits_gb: float
    flops_per_token: float    # training, without recomputation
    tokens_per_s: float       # per GPU at the given MFU, with checkpointing
    step_s: float             # one pack per GPU

    def total(self, checkpointing: bool) -> float:
        act = self.act_ckpt_gb if checkpointing else self.act_full_gb
        return (self.weights_gb + self.grads_gb + self.adam_gb + self.ema_gb + self.gathered_gb + act
                + self.logits_gb)


def estimate(cfg, *, gpus: int = 8, tokens: int = 33_000, ce_fraction: float = 0.15,
             sample_tokens: int = 7_000, ema: bool = True, peak_tflops: float = 989.0,
             mfu: float = 0.4) -> Estimate:
    """``ce_fraction``: share of a pack's tokens that are CE targets (text); ``sample_tokens``: mean
    trajectory length (the mean attention context is about half of it)."""
    p = expected_num_parameters(cfg)
    shard = p / gpus
    layer = expert_layer_parameters(cfg) * (2 if cfg.mot else 1)
    per_tok_layer = activation_elements_per_token_layer(cfg) * 2 \
        + (3 * cfg.hidden_size + cfg.num_kv_heads * cfg.head_dim) * 2     # bf16 + fp32 norm copies
    act_full = tokens * cfg.num_layers * per_tok_layer
    act_ckpt = tokens * cfg.num_layers * cfg.hidden_size * 2 + tokens * per_tok_layer
    logits = ce_fraction * tokens * cfg.vocab_size * (2 + 4)
    fpt = flops_per_token(cfg, sample_tokens / 2, training=True, lm_head_fraction=ce_fraction)
    tps = mfu * peak_tflops * 1e12 / (fpt * 4 / 3)
    return Estimate(params=p, weights_gb=4 * shard / GB, grads_gb=4 * shard / GB, adam_gb=8 * shard / GB,
                    ema_gb=(4 * shard if ema else 0) / GB, gathered_gb=2 * 2 * layer / GB,
                    act_full_gb=act_full / GB, act_ckpt_gb=act_ckpt / GB, logits_gb=logits / GB,
                    flops_per_token=fpt, tokens_per_s=tps, step_s=tokens / tps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="bagel-7b")
    ap.add_argument("--vocab", type=int, default=152_064, help="vocabulary rows (BAGEL's Qwen2: 152064)")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=33_000, help="tokens of one pack (one per GPU per step)")
    ap.add_argument("--ce-fraction", type=float, default=0.15)
    ap.add_argument("--sample-tokens", type=int, default=7_000)
    ap.add_argument("--no-ema", action="store_true")
    ap.add_argument("--gpu-mem-gb", type=float, default=80.0)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    ap.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation")
    ap.add_argument("--steps", type=int, default=6000)
    a = ap.parse_args(argv)
    cfg = model_config(a.preset, vocab_size=a.vocab)
    e = estimate(cfg, gpus=a.gpus, tokens=a.tokens, ce_fraction=a.ce_fraction, sample_tokens=a.sample_tokens,
                 ema=not a.no_ema, peak_tflops=a.peak_tflops, mfu=a.mfu)
    print(f"{a.preset}: {e.params / 1e9:.2f}B parameters (both experts), {a.gpus} GPUs, "
          f"{a.tokens} tokens/pack")
    rows = [("weights fp32 (shard)", e.weights_gb), ("gradients fp32 (shard)", e.grads_gb),
            ("AdamW m, v fp32 (shard)", e.adam_gb), ("EMA fp32 (shard)", e.ema_gb),
            ("2 gathered layers bf16", e.gathered_gb), ("logits at CE positions", e.logits_gb),
            ("activations, no checkpointing", e.act_full_gb),
            ("activations, checkpoint every layer", e.act_ckpt_gb)]
    for name, gb in rows:
        print(f"  {name:<38} {gb:8.1f} GB")
    for ck in (False, True):
        tot = e.total(ck)
        print(f"  total per GPU, checkpointing {'on ' if ck else 'off'}        {tot:8.1f} GB "
              f"({'fits' if tot < 0.9 * a.gpu_mem_gb else 'does NOT fit'} {a.gpu_mem_gb:.0f} GB "
              f"with 10% headroom)")
    print(f"  training FLOPs/token {e.flops_per_token / 1e9:.1f} GFLOP (+1/3 recompute); "
          f"at MFU {a.mfu:.0%} of "
          f"{a.peak_tflops:.0f} TFLOP/s: {e.tokens_per_s:,.0f} tokens/s/GPU, {e.step_s:.1f} s/step, "
          f"{a.steps} steps in {a.steps * e.step_s / 3600:.1f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
