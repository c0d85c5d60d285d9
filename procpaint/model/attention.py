"""Attention backends over one packed sequence.

The mask (docs/ARCHITECTURE.md, "Mask semantics") is built once per forward from the split
metadata by ``procpaint.kernels.masks`` and wrapped in an :class:`AttnContext` that every layer
shares.
:func:`attend` then runs one of:

- ``sdpa``: ``F.scaled_dot_product_attention``, one call per sample with that sample's dense boolean
  mask block (samples never see each other, so the (L, L) mask is block diagonal: per-sample calls
  skip the zero blocks, ~L / sample_len less work than one masked call; an all-causal sample uses
  ``is_causal`` and no mask). Works everywhere; the CPU training path (FlexAttention has no CPU
  backward).
- ``flex``: FlexAttention with the kernel's ``BlockMask`` (block-sparse, the GPU training path).
  Compiled on CUDA; eager (forward only, scores materialised) on CPU, which is what tests use.
- ``xformers``: ``memory_efficient_attention`` with an additive bias (optional dependency).
- ``flash``: flash-attn varlen. Its one-mode-per-call semantics fit only packs where every sample
  is all-causal, or every sample is a single full/noise split (e.g. an inference prefill);
  anything else is a clear error rather than a silently wrong mask.

Tensors are sequence-major: q (Lq, H, hd), k/v (Lk, Hkv, hd) with H % Hkv == 0 (GQA). Lk may
exceed Lq when a KV cache is prepended (inference); such callers build the context themselves,
e.g. :meth:`AttnContext.from_dense`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from procpaint.kernels import masks

logger = logging.getLogger(__name__)

BACKENDS = ("sdpa", "flex", "xformers", "flash")
_logged_choices: set[tuple[str, str]] = set()
_compiled_flex: Any = None


def backend_available(name: str, device: torch.device) -> bool:
    """Whether backend ``name`` can run on ``device`` in this environment."""
    if name == "sdpa":
        return True
    if name == "flex":
        try:
            from torch.nn.attention import flex_attention  # noqa: F401
        except ImportError:
            return False
        return True
    if name in ("xformers", "flash"):
        if device.type != "cuda":
            return False
        try:
            __import__("xformers.ops" if name == "xformers" else "flash_attn")
        except ImportError:
            return False
        return True
    raise ValueError(f"unknown attention backend {name!r}; choose from auto, {', '.join(BACKENDS)}")


def resolve_backend(name: str, device: torch.device | str) -> str:
    """Map ``auto`` to a concrete backend for ``device`` (logged once per choice); check others.

    auto: CUDA -> flex (block-sparse, any mask), else xformers, else sdpa; CPU -> sdpa (the only
    backend with a CPU backward). flash is never chosen automatically: it fits only some packs.
    """
    device = torch.device(device)
    if name == "auto":
        order = ("flex", "xformers", "sdpa") if device.type == "cuda" else ("sdpa",)
        choice = next(b for b in order if backend_available(b, device))
        if (device.type, choice) not in _logged_choices:
            _logged_choices.add((device.type, choice))
            logger.info("attention backend auto -> %s on %s", choice, device.type)
        return choice
    if not backend_available(name, device):
        raise RuntimeError(f"model.attn_backend={name!r} is not available on {device.type} "
                           f"(xformers/flash need CUDA and their package: pip install procpaint[gpu])")
    return name


@dataclass
class AttnContext:
    """Everything a backend needs about the mask, built once per forward and shared by all layers."""

    backend: str
    q_len: int
    k_len: int
    # sdpa: (q0, q1, k0, k1, mask) per diagonal block: queries q0:q1 attend keys k0:k1 under
    # ``mask`` (q1-q0, k1-k0) bool (True = may attend), or causally when it is None; blocks tile
    # the queries in order.
    blocks: list[tuple[int, int, int, int, torch.Tensor | None]] | None = None
    bias: torch.Tensor | None = None          # xformers: (1, 1, Lq, Lk) additive, 8-aligned storage
    block_mask: Any = None                    # flex: torch BlockMask
    cu_seqlens_q: torch.Tensor | None = None  # flash: (S+1,) int32
    cu_seqlens_k: torch.Tensor | None = None
    max_seqlen_q: int = 0
    max_seqlen_k: int = 0
    causal: bool = False

    @classmethod
    def from_dense(cls, mask: torch.Tensor, backend: str = "sdpa", dtype: torch.dtype = torch.float32
                   ) -> AttnContext:
        """A context from an explicit (Lq, Lk) boolean mask (inference with a KV cache)."""
        lq, lk = mask.shape
        if backend == "sdpa":
            return cls("sdpa", lq, lk, blocks=[(0, lq, 0, lk, mask)])
        if backend == "xformers":
            return cls("xformers", lq, lk, bias=_aligned_bias(mask, dtype))
        raise ValueError(f"from_dense supports sdpa and xformers, not {backend!r}")

    def dense_mask(self) -> torch.Tensor:
        """The (Lq, Lk) boolean mask an sdpa context stands for (tests, debugging)."""
        if self.blocks is None:
            raise ValueError(f"dense_mask needs an sdpa context, this one is {self.backend!r}")
        out = torch.zeros(self.q_len, self.k_len, dtype=torch.bool)
        for q0, q1, k0, k1, m in self.blocks:
            out[q0:q1, k0:k1] = torch.ones(q1 - q0, k1 - k0, dtype=torch.bool).tril() if m is None else m
        return out


def _aligned_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(Lq, Lk) bool -> (1, 1, Lq, Lk) additive bias whose row stride is a multiple of 8 (xformers)."""
    lq, lk = mask.shape
    store = torch.zeros(lq, (lk + 7) // 8 * 8, dtype=dtype, device=mask.device)
    store[:, :lk].masked_fill_(~mask, float("-inf"))
    return store[None, None, :, :lk]


def _samples(split_lens, attn_modes, sample_lens):
    """Per sample: (start, its split lengths, its modes)."""
    i, start = 0, 0
    for slen in sample_lens:
        lens, modes, acc = [], [], 0
        while acc < slen and i < len(split_lens):
            acc += split_lens[i]
            lens.append(split_lens[i])
            modes.append(attn_modes[i])
            i += 1
        if acc != slen:
            raise ValueError(f"split_lens do not tile sample_lens (sample of {slen} tokens at {start})")
        yield start, lens, modes
        start += slen


def _flash_layout(split_lens, attn_modes, sample_lens, num_real_tokens):
    """(causal, segment lengths) when every real sample is one flash-attn segment, else raise."""
    flags = []
    real_left = num_real_tokens if num_real_tokens else sum(sample_lens)
    for (_, _, modes), slen in zip(_samples(split_lens, attn_modes, sample_lens), sample_lens):
        if real_left <= 0:                     # the padding sample: its outputs are never read
            continue
        real_left -= slen
        if all(m == "causal" for m in modes):
            flags.append(True)
        elif len(modes) == 1:
            flags.append(False)
        else:
            raise NotImplementedError(
                f"attn_backend='flash' cannot express a sample with splits {modes}: flash-attn varlen "
                "has one mode per call (all-causal samples, or one full/noise split per sample); "
                "use 'flex' or 'sdpa' for mixed packs")
    if len(set(flags)) > 1:
        raise NotImplementedError("attn_backend='flash': the pack mixes causal samples and full "
                                  "samples; flash-attn takes one causal flag per call")
    return (flags[0] if flags else True), list(sample_lens)


SDPA_GROUP_TOKENS = 512


def _sdpa_groups(split_lens, attn_modes, sample_lens, device, group_tokens: int = SDPA_GROUP_TOKENS):
    """Diagonal blocks for the sdpa backend: consecutive samples merged until a block holds
    ``group_tokens`` tokens (its mask is then block-diagonal over those samples).

    One block per sample would cost O(samples x L) in the backward (every slice of q/k/v gets a
    full-size gradient buffer): a pack of 120 short single-pass samples spent ~30x its forward
    there. Groups of ~512 tokens keep the attention work near-linear in L and the slices few.
    """
    blocks, group = [], []                     # group: (start, lens, modes) of consecutive samples

    def flush():
        start = group[0][0]
        end = group[-1][0] + sum(group[-1][1])
        lens = [n for _, ls, _ in group for n in ls]
        modes = [m for _, _, ms in group for m in ms]
        if len(group) == 1 and all(m == "causal" for m in modes):
            mask = None                        # one all-causal sample: is_causal, no mask tensor
        else:
            mask = masks.attention_mask(lens, modes, [sum(ls) for _, ls, _ in group], device=device)
        blocks.append((start, end, start, end, mask))
        group.clear()

    size = 0
    for start, lens, modes in _samples(split_lens, attn_modes, sample_lens):
        if all(m == "causal" for m in modes):  # e.g. the padding tail: its own mask-free block
            if group:
                flush()
            group.append((start, lens, modes))
            flush()
            size = 0
            continue
        group.append((start, lens, modes))
        size += sum(lens)
        if size >= group_tokens:
            flush()
            size = 0
    if group:
        flush()
    return blocks


def build_attention(backend: str, split_lens: list[int], attn_modes: list[str], sample_lens: list[int],
                    *, device: torch.device | str, dtype: torch.dtype = torch.float32,
                    num_real_tokens: int | None = None) -> AttnContext:
    """The shared :class:`AttnContext` for one packed sequence of ``sum(sample_lens)`` tokens.

    ``backend`` may be ``auto``. ``num_real_tokens`` (tokens before the padding sample) only
    matters for flash, which ignores the padding sample's mode.
    """
    device = torch.device(device)
    backend = resolve_backend(backend, device)
    L = sum(sample_lens)
    if backend == "sdpa":
        return AttnContext("sdpa", L, L, blocks=_sdpa_groups(split_lens, attn_modes, sample_lens, device))
    if backend == "flex":
        bm = masks.block_mask(split_lens, attn_modes, sample_lens, device=device)
        return AttnContext("flex", L, L, block_mask=bm)
    if backend == "xformers":
        mask = masks.attention_mask(split_lens, attn_modes, sample_lens, device=device)
        return AttnContext("xformers", L, L, bias=_aligned_bias(mask, dtype))
    causal, segs = _flash_layout(split_lens, attn_modes, sample_lens, num_real_tokens)
    cu = torch.tensor([0, *segs], device=device, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return AttnContext("flash", L, L, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max(segs),
                       max_seqlen_k=max(segs), causal=causal)


def _flex(q, k, v, block_mask):
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention
    if q.device.type == "cuda":
        if _compiled_flex is None:
            # Uncompiled flex materialises the scores; compiled it is the fused block-sparse kernel.
            _compiled_flex = torch.compile(flex_attention)
        return _compiled_flex(q, k, v, block_mask=block_mask, enable_gqa=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True)


@torch.compiler.disable
def _sdpa_blocks(q4, k4, v4, blocks):
    # Kept out of torch.compile graphs (apply_compile): the loop's trip count and block sizes vary
    # with every pack's layout and would otherwise recompile the layer for each new layout.
    outs = [F.scaled_dot_product_attention(q4[:, :, q0:q1], k4[:, :, k0:k1], v4[:, :, k0:k1],
                                           attn_mask=mask, is_causal=mask is None, enable_gqa=True)
            for q0, q1, k0, k1, mask in blocks]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)                # (1, H, Lq, hd)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
    """Masked softmax attention, q (Lq, H, hd), k/v (Lk, Hkv, hd) -> (Lq, H, hd), scale hd**-0.5."""
    if q.shape[0] != ctx.q_len or k.shape[0] != ctx.k_len:
        raise ValueError(f"attention context is for {ctx.q_len} queries x {ctx.k_len} keys, got "
                         f"{q.shape[0]} x {k.shape[0]}")
    if ctx.backend == "flash":
        from flash_attn import flash_attn_varlen_func
        return flash_attn_varlen_func(q, k, v, ctx.cu_seqlens_q, ctx.cu_seqlens_k, ctx.max_seqlen_q,
                                      ctx.max_seqlen_k, causal=ctx.causal)
    if ctx.backend == "xformers":
        import xformers.ops as xops
        h = q.shape[1]
        rep = h // k.shape[1]                  # xformers' 4-D API wants K/V at full head count
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        bias = ctx.bias
        if bias.dtype != q.dtype:              # a plain .to() would lose the 8-aligned row stride
            bias = _aligned_bias(bias[0, 0] == 0, q.dtype)
        bias = bias.expand(1, h, ctx.q_len, ctx.k_len)
        return xops.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias)[0]
    # (L, H, hd) -> (1, H, L, hd): both remaining backends are head-major.
    q4, k4, v4 = (x.transpose(0, 1)[None] for x in (q, k, v))
    if ctx.backend == "flex":
        out = _flex(q4, k4, v4, ctx.block_mask)
    elif ctx.backend == "sdpa":
        out = _sdpa_blocks(q4, k4, v4, ctx.blocks)
    else:
        raise ValueError(f"unknown attention backend {ctx.backend!r}")
    return out[0].transpose(0, 1)                                            # (Lq, H, hd)
