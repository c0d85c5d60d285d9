"""Attention masks of a packed sequence: the rule, its references, the native ops, public API.

A packed sequence of length L is cut into *splits* (each with an attention mode) and *samples*
(whole trajectories, padding included as its own sample). Query q may attend key k iff
(docs/ARCHITECTURE.md, exactly BAGEL's ``create_sparse_mask``)::

    same_sample(q, k)  AND  ( k <= q  OR  same full-or-noise split(q, k) )
                       AND NOT ( k is in a noise split AND q is not in that same split )

Public functions (sequences of ints or 1-D int tensors; modes as strings or MODES codes)::

    attention_mask(split_lens, attn_modes, sample_lens, *, device=None, out=None)        -> (L, L) bool
    attention_bias(split_lens, attn_modes, sample_lens, *, dtype, device=None, out=None) -> (L, L) 0/-inf
    block_mask(split_lens, attn_modes, sample_lens, *, block_size=128, device=None) -> BlockMask
    mask_mod(split_lens, attn_modes, sample_lens, device=None)  -> FlexAttention mask_mod (the rule)

Each routes to ``torch.ops.procpaint.*`` (csrc/packing/, CPU + CUDA) when the extension has a
kernel for the device, else to the pure-PyTorch references (``attention_mask_ref``,
``block_mask_ref``; op-level ones in ``_masks_ref``). Validation (:func:`validate`) runs on
the host and raises ``ValueError`` naming the problem. ``block_mask`` never evaluates
the rule on L*L pairs: blocks are classified from split boundaries (see packing_rule.h) and its
tensors equal ``create_block_mask(mask_mod(...), None, None, L, L, BLOCK_SIZE=block_size)``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn.attention.flex_attention import BlockMask

from procpaint import _ext
from procpaint.kernels import _masks_ref as ref
from procpaint.kernels.modes import Mode

MODES: dict[str, int] = {m.value: m.code for m in Mode}
_MODE_NAMES = {code: name for name, code in MODES.items()}
_INT32_MAX = 2**31 - 1
_BLOCK_TENSORS = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
                  "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices")


@dataclass(frozen=True)
class Packing:
    """Validated packing metadata on the host: S splits, N samples, L tokens."""

    split_lens: tuple[int, ...]  # (S,)
    modes: tuple[int, ...]       # (S,) MODES codes
    sample_lens: tuple[int, ...]  # (N,)

    @property
    def seq_len(self) -> int:
        return sum(self.split_lens)

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(split_lens, modes, sample_lens) as int64 tensors on ``device``."""
        as_t = lambda xs: torch.tensor(xs, dtype=torch.int64, device=device)
        return as_t(self.split_lens), as_t(self.modes), as_t(self.sample_lens)


def _ints(values, name: str) -> list[int]:
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(values.shape)}")
        if values.dtype.is_floating_point or values.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got dtype {values.dtype}")
        return [int(v) for v in values.tolist()]
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of ints or a 1-D tensor, got {type(values).__name__}")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name}[{i}] = {v!r} is not an int")
        out.append(int(v))
    return out


def _mode_codes(attn_modes) -> list[int]:
    raw = attn_modes.tolist() if isinstance(attn_modes, torch.Tensor) else attn_modes
    if isinstance(raw, str) or not isinstance(raw, Sequence):
        raise ValueError(f"attn_modes must be a sequence of mode names or codes, got {attn_modes!r}")
    codes = []
    for i, m in enumerate(raw):
        if isinstance(m, str) and m in MODES:
            codes.append(MODES[m])
        elif isinstance(m, int) and not isinstance(m, bool) and m in _MODE_NAMES:
            codes.append(m)
        else:
            raise ValueError(f"attn_modes[{i}] = {m!r} is not one of {sorted(MODES)} (or codes 0/1/2)")
    return codes


def validate(split_lens, attn_modes, sample_lens) -> Packing:
    """Check packing metadata and return it as a :class:`Packing`; ``ValueError`` names the problem."""
    splits = _ints(split_lens, "split_lens")
    modes = _mode_codes(attn_modes)
    samples = _ints(sample_lens, "sample_lens")
    if not splits or not samples:
        raise ValueError(f"empty packing: {len(splits)} splits, {len(samples)} samples")
    if len(modes) != len(splits):
        raise ValueError(f"attn_modes has {len(modes)} entries for {len(splits)} splits")
    for name, xs in (("split_lens", splits), ("sample_lens", samples)):
        bad = next((i for i, x in enumerate(xs) if x <= 0), None)
        if bad is not None:
            raise ValueError(f"{name}[{bad}] = {xs[bad]} must be positive")
    total = sum(splits)
    if total != sum(samples):
        raise ValueError(f"sum(split_lens) = {total} != sum(sample_lens) = {sum(samples)}")
    if total > _INT32_MAX:
        raise ValueError(f"sequence length {total} does not fit int32 (max {_INT32_MAX})")
    end, s, sample_end = 0, 0, samples[0]
    for j, n in enumerate(splits):  # every sample boundary must also be a split boundary
        end += n
        if end > sample_end:
            raise ValueError(f"split {j} (tokens {end - n}..{end - 1}) crosses the boundary of "
                             f"sample {s} at token {sample_end}")
        if end == sample_end and s + 1 < len(samples):
            s += 1
            sample_end += samples[s]
    return Packing(tuple(splits), tuple(modes), tuple(samples))


@torch.compiler.assume_constant_result
def _use_native(op: str, device_type: str) -> bool:
    """Whether the extension has a kernel for ``op`` on ``device_type``; a constant under
    torch.compile (the loader's file checks are not traceable and never change in a process)."""
    return _ext.has_kernel(op, device_type)


def _device_of(device, *inputs) -> torch.device:
    if device is not None:
        return torch.device(device)
    for x in inputs:
        if isinstance(x, torch.Tensor):
            return x.device
    return torch.device("cpu")


# ---- references (pure PyTorch, the spec) ----------------------------------------------------

def attention_mask_ref(split_lens, attn_modes, sample_lens, *, device=None) -> torch.Tensor:
    """:func:`attention_mask` in pure PyTorch (the spec): the rule evaluated on every pair."""
    p = validate(split_lens, attn_modes, sample_lens)
    return ref.attention_mask_ref(*p.tensors(_device_of(device, split_lens, sample_lens)), p.seq_len)


def block_mask_ref(split_lens, attn_modes, sample_lens, *, block_size: int = 128,
                   device=None) -> BlockMask:
    """:func:`block_mask` computed by :func:`block_mask_tensors_ref` (pure PyTorch)."""
    return _block_mask(split_lens, attn_modes, sample_lens, block_size, device, native=False)


# ---- public API -------------------------------------------------------------------------------

def attention_mask(split_lens, attn_modes, sample_lens, *, device=None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask of the packing rule, True = query row may attend key column.

    split_lens (S,), attn_modes (S,), sample_lens (N,) -> (L, L) bool on ``device``, L = sum(split_lens).
    ``out``: a contiguous (L, L) bool buffer to write into (reusing one per step skips the page
    faults of a fresh L*L allocation, which on CPU cost several times the fill itself).
    """
    p = validate(split_lens, attn_modes, sample_lens)
    dev = out.device if out is not None else _device_of(device, split_lens, sample_lens)
    t = p.tensors(dev)
    if _use_native("attention_mask", dev.type):
        if out is not None:
            torch.ops.procpaint.attention_mask_out(*t, p.seq_len, out)
            return out
        return torch.ops.procpaint.attention_mask(*t, p.seq_len)
    mask = ref.attention_mask_ref(*t, p.seq_len)
    return mask if out is None else _copy_out(out, mask)


def attention_bias(split_lens, attn_modes, sample_lens, *, dtype: torch.dtype = torch.float32,
                   device=None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Additive form of :func:`attention_mask` for SDPA / xformers: (L, L) ``dtype``, 0 or -inf.
    With ``out`` (contiguous (L, L) float buffer) its dtype and device are used."""
    if out is not None:
        dtype = out.dtype
    if not dtype.is_floating_point:
        raise TypeError(f"attention_bias: dtype must be a floating type, got {dtype}")
    p = validate(split_lens, attn_modes, sample_lens)
    dev = out.device if out is not None else _device_of(device, split_lens, sample_lens)
    t = p.tensors(dev)
    if _use_native("attention_bias", dev.type):
        if out is not None:
            torch.ops.procpaint.attention_bias_out(*t, p.seq_len, dtype, out)
            return out
        return torch.ops.procpaint.attention_bias(*t, p.seq_len, dtype)
    bias = ref.attention_bias_ref(*t, p.seq_len, dtype)
    return bias if out is None else _copy_out(out, bias)


def _copy_out(out: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    if out.shape != result.shape or out.dtype != result.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {tuple(result.shape)} {result.dtype} tensor, got "
                         f"{tuple(out.shape)} {out.dtype}")
    return out.copy_(result)


def block_mask(split_lens, attn_modes, sample_lens, *, block_size: int = 128,
               device=None) -> BlockMask:
    """FlexAttention ``BlockMask`` of the packing rule, built from split metadata.

    Tensors (int32, nb = ceil(L / block_size)): kv_num_blocks (1, 1, nb), kv_indices (1, 1, nb, nb)
    and the full_* / q_* variants, identical to ``create_block_mask``'s; ``seq_lengths`` = (L, L);
    ``mask_mod`` is :func:`mask_mod` (applied by FlexAttention on partial blocks only).
    """
    return _block_mask(split_lens, attn_modes, sample_lens, block_size, device, native=True)


def _block_mask(split_lens, attn_modes, sample_lens, block_size, device, *, native) -> BlockMask:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    p = validate(split_lens, attn_modes, sample_lens)
    dev = _device_of(device, split_lens, sample_lens)
    t = p.tensors(dev)
    if native and _use_native("block_mask_tensors", dev.type):
        parts = torch.ops.procpaint.block_mask_tensors(*t, p.seq_len, block_size)
    else:
        parts = ref.block_mask_tensors_ref(*t, p.seq_len, block_size)
    # Built directly (not via from_kv_blocks): the q-side tensors come from the same kernel,
    # sparing from_kv_blocks' vmap'd transpose.
    return BlockMask(
        seq_lengths=(p.seq_len, p.seq_len), **dict(zip(_BLOCK_TENSORS, parts)),
        BLOCK_SIZE=(block_size, block_size), mask_mod=ref.rule_from_tensors(*t),
    )


def mask_mod(split_lens, attn_modes, sample_lens, device=None):
    """The rule as a FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool`` (for torch's own
    ``create_block_mask`` / ``create_mask`` path); holds three int64 (L,) id tensors."""
    p = validate(split_lens, attn_modes, sample_lens)
    return ref.rule_from_tensors(*p.tensors(_device_of(device, split_lens, sample_lens)))


def mean_keys_per_query(split_lens, attn_modes, sample_lens) -> float:
    """Mean number of keys a query attends under the packing rule (``attention_mask(...).sum() / L``),
    from the split boundaries in O(splits): the attention term of ``model.flops_per_token``.

    A query of split s sees the non-noise splits before it in its sample, plus its own split's
    tokens up to itself (causal) or whole (full / noise).
    """
    p = validate(split_lens, attn_modes, sample_lens)
    total, seen, left, sample = 0, 0, 0, iter(p.sample_lens)
    causal, noise = MODES["causal"], MODES["noise"]
    for n, mode in zip(p.split_lens, p.modes):
        if left == 0:                              # a new sample starts
            left, seen = next(sample), 0
        own = n * (n + 1) // 2 if mode == causal else n * n
        total += n * seen + own
        seen += 0 if mode == noise else n
        left -= n
    return total / max(p.seq_len, 1)
