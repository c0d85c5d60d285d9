"""Mixture-of-Transformers decoder layer (BAGEL's ``Qwen2MoTDecoderLayer``, written afresh).

Every token takes one of two *experts* — understanding (text, vision markers, ViT patch tokens,
padding) or generation (latent tokens) — for everything that is per token: pre-norms, q/k/v/o projections,
q/k RMSNorm and the SwiGLU MLP. Attention itself is one shared softmax over the whole packed
sequence, so text and image tokens see each other through the mask only.

Token order. The hidden state travels through the stack in *routed order* (all understanding
tokens, then all generation tokens; :class:`Routing`), so each expert works on one contiguous
slice and needs no gather. Only attention needs sequence order (the block-sparse and varlen masks
are defined there); q/k/v are permuted into it with one gather and the attention output back with
another: two gathers per layer instead of BAGEL's per-projection scatter. With ``mot=False`` or a
pack without latent tokens the permutation is the identity and skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from procpaint.model.attention import AttnContext, attend
from procpaint.model.config import ModelConfig
from procpaint.model.embeddings import apply_rope

KVCache = tuple[torch.Tensor, torch.Tensor]   # k, v: (Lk, Hkv, hd), RoPE applied, sequence order


class RMSNorm(nn.Module):
    """y = x / rms(x) * w, computed in float32 and cast back (as Qwen2)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases (Llama / Qwen2 MLP)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


@dataclass
class Routing:
    """Which positions go to which expert, and the permutations between sequence and routed order."""

    num_und: int
    num_gen: int
    to_routed: torch.Tensor | None = None   # (L,) sequence position of each routed row; None = identity
    to_seq: torch.Tensor | None = None      # (L,) routed row of each sequence position

    @classmethod
    def build(cls, und_indexes: torch.Tensor, gen_indexes: torch.Tensor, seq_len: int, mot: bool
              ) -> Routing:
        n_und, n_gen = und_indexes.numel(), gen_indexes.numel()
        if n_und + n_gen != seq_len:
            raise ValueError(f"und_indexes ({n_und}) + gen_indexes ({n_gen}) must cover the "
                             f"{seq_len} positions of the pack")
        if not mot or n_gen == 0:
            return cls(seq_len, 0)
        if n_und == 0:  # only generation rows (a flow step of cached inference): no permutation
            return cls(0, seq_len)
        to_routed = torch.cat([und_indexes, gen_indexes])                    # (L,)
        to_seq = torch.empty_like(to_routed)
        to_seq[to_routed] = torch.arange(seq_len, device=to_routed.device)
        return cls(n_und, n_gen, to_routed, to_seq)

    def routed(self, x_seq: torch.Tensor) -> torch.Tensor:
        """(L, ...) sequence order -> routed order."""
        return x_seq if self.to_routed is None else x_seq.index_select(0, self.to_routed)

    def sequence(self, x_routed: torch.Tensor) -> torch.Tensor:
        """(L, ...) routed order -> sequence order."""
        return x_routed if self.to_seq is None else x_routed.index_select(0, self.to_seq)

    def apply(self, x: torch.Tensor, f_und, f_gen) -> torch.Tensor:
        """Run f_und on the understanding rows and f_gen on the generation rows of routed x."""
        if self.num_gen == 0:
            return f_und(x)
        if self.num_und == 0:
            return f_gen(x)
        xu, xg = x.split([self.num_und, self.num_gen])
        return torch.cat([f_und(xu), f_gen(xg)])


@dataclass
class LayerInputs:
    """Per-forward state shared by every layer (built once in the transformer)."""

    routing: Routing
    cos: torch.Tensor          # (L, 1, hd) RoPE tables in sequence order
    sin: torch.Tensor
    attn: AttnContext | None
    # Inference with a KV cache (procpaint.inference.engine): an object whose
    # ``attend(layer_id, q, k, v) -> (L, H, hd)`` stores this call's keys/values where it keeps
    # them and attends each query to its own context; ``attn`` is then unused.
    kv: Any = None


class Expert(nn.Module):
    """One expert's per-token weights of a layer."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hd, h, hkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
        self.num_heads, self.num_kv_heads, self.head_dim = h, hkv, hd
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.qkv = nn.Linear(cfg.hidden_size, (h + 2 * hkv) * hd, bias=cfg.qkv_bias)  # fused q|k|v
        self.q_norm = RMSNorm(hd, cfg.rms_norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(hd, cfg.rms_norm_eps) if cfg.qk_norm else nn.Identity()
        self.o = nn.Linear(h * hd, cfg.hidden_size, bias=False)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """x (n, D) -> (n, (H + 2 Hkv) * hd): pre-norm, q|k|v projection, per-head q/k RMSNorm."""
        n, hd, h, hkv = x.shape[0], self.head_dim, self.num_heads, self.num_kv_heads
        q, k, v = self.qkv(self.input_norm(x)).split([h * hd, hkv * hd, hkv * hd], dim=-1)
        q = self.q_norm(q.reshape(n, h, hd)).reshape(n, h * hd)
        k = self.k_norm(k.reshape(n, hkv, hd)).reshape(n, hkv * hd)
        return torch.cat([q, k, v], dim=-1)

    def mlp_block(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.post_attn_norm(x))

    def reset_parameters(self, std: float, out_std: float) -> None:
        """N(0, std) on input projections; N(0, out_std) on residual outputs (o, mlp.down)."""
        for lin in (self.qkv, self.mlp.gate, self.mlp.up):
            nn.init.normal_(lin.weight, std=std)
        for lin in (self.o, self.mlp.down):
            nn.init.normal_(lin.weight, std=out_std)
        if self.qkv.bias is not None:
            nn.init.zeros_(self.qkv.bias)
        for m in (self.input_norm, self.post_attn_norm, self.q_norm, self.k_norm):
            if isinstance(m, RMSNorm):
                m.reset_parameters()


class MoTDecoderLayer(nn.Module):
    """Pre-norm block: x + Attn(norm(x)), then x + MLP(norm(x)), each per expert; shared attention."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.und = Expert(cfg)
        self.gen = Expert(cfg) if cfg.mot else None

    def _gen(self) -> Expert:
        # A dense model routes everything to `und` (Routing.num_gen == 0), so this is never reached.
        return self.gen if self.gen is not None else self.und

    def reset_parameters(self, cfg: ModelConfig) -> None:
        # GPT-2 / Megatron: residual-branch outputs scaled by 1/sqrt(2 * layers) so the residual
        # stream's variance does not grow with depth at init.
        out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
        for e in (self.und, self.gen):
            if e is not None:
                e.reset_parameters(cfg.init_std, out_std)

    def forward(self, x: torch.Tensor, inputs: LayerInputs, past_kv: KVCache | None = None,
                use_cache: bool = False) -> tuple[torch.Tensor, KVCache | None]:
        """x (L, D) in routed order -> (L, D), and this layer's (k, v) when ``use_cache``.

        ``past_kv``: keys/values of earlier tokens (Lp, Hkv, hd), prepended before attention; the
        context in ``inputs.attn`` must then be (L, Lp + L).
        """
        r, gen = inputs.routing, self._gen()
        L, h, hkv, hd = x.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        qkv = r.sequence(r.apply(x, self.und.project_qkv, gen.project_qkv))  # (L, (H+2Hkv) hd)
        q, k, v = qkv.split([h * hd, hkv * hd, hkv * hd], dim=-1)
        q = apply_rope(q.reshape(L, h, hd), inputs.cos, inputs.sin)          # (L, H, hd)
        k = apply_rope(k.reshape(L, hkv, hd), inputs.cos, inputs.sin)        # (L, Hkv, hd)
        v = v.reshape(L, hkv, hd)
        if inputs.kv is not None:
            a = inputs.kv.attend(self.layer_id, q, k, v)                     # (L, H, hd)
        else:
            if past_kv is not None:
                k, v = torch.cat([past_kv[0], k]), torch.cat([past_kv[1], v])  # (Lp + L, Hkv, hd)
            a = attend(q, k, v, inputs.attn)
        a = r.routed(a.reshape(L, h * hd))                                   # (L, H hd) routed
        x = x + r.apply(a, self.und.o, gen.o)
        x = x + r.apply(x, self.und.mlp_block, gen.mlp_block)
        return x, ((k, v) if use_cache else None)
