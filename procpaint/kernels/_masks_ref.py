"""Pure-PyTorch references of the packing-mask ops (the spec the native kernels are tested
against, and the fallback when procpaint._C has no kernel for a device).

Signatures mirror ``torch.ops.procpaint.*``: validated int64 tensors split_lens (S,), modes (S,)
(0 causal, 1 full, 2 noise), sample_lens (N,) on one device, plus seq_len L. The block reference
classifies block pairs from split boundaries in O(nb^2) tensor ops (the same derivation as
csrc/packing/packing_rule.h, written independently as broadcasting); the rule itself is
:func:`rule_from_tensors`, the per-token form BAGEL's ``create_sparse_mask`` uses.
"""

from __future__ import annotations

import torch

from procpaint.kernels.modes import Mode

CAUSAL, FULL, NOISE = Mode.CAUSAL.code, Mode.FULL.code, Mode.NOISE.code
_CHUNK_ELEMS = 1 << 24  # rows per chunk of the dense reference bound its temporaries to ~16M


def _token_ids(split_lens, modes, sample_lens):
    """Per-token sample id, full/noise split id (-1 if causal) and noise split id (-1 if not), (L,)."""
    seq_len = None if split_lens.device.type == "cuda" else int(split_lens.sum())
    split_id = torch.repeat_interleave(torch.arange(len(split_lens), device=split_lens.device),
                                       split_lens, output_size=seq_len)
    sample_id = torch.repeat_interleave(torch.arange(len(sample_lens), device=split_lens.device),
                                        sample_lens, output_size=seq_len)
    mode = modes[split_id]
    full_or_noise = torch.where(mode != CAUSAL, split_id, -1)
    noise = torch.where(mode == NOISE, split_id, -1)
    return sample_id, full_or_noise, noise


def rule_from_tensors(split_lens, modes, sample_lens):
    """The packing rule as ``mask_mod(b, h, q_idx, kv_idx)``; broadcasts over index tensors."""
    sample_id, full_or_noise, noise = _token_ids(split_lens, modes, sample_lens)

    def packing_mask_mod(b, h, q_idx, kv_idx):
        same_sample = sample_id[q_idx] == sample_id[kv_idx]
        same_split = (full_or_noise[q_idx] == full_or_noise[kv_idx]) & (full_or_noise[q_idx] >= 0)
        hidden_noise = (noise[kv_idx] >= 0) & (noise[q_idx] != noise[kv_idx])
        return same_sample & ((q_idx >= kv_idx) | same_split) & ~hidden_noise

    return packing_mask_mod


def attention_mask_ref(split_lens, modes, sample_lens, seq_len: int) -> torch.Tensor:
    """(L, L) bool: the rule evaluated row chunk by row chunk (temporaries stay ~16M elements)."""
    rule = rule_from_tensors(split_lens, modes, sample_lens)
    device = split_lens.device
    out = torch.empty(seq_len, seq_len, dtype=torch.bool, device=device)
    keys = torch.arange(seq_len, device=device)[None, :]  # (1, L)
    rows = max(1, _CHUNK_ELEMS // seq_len)
    for start in range(0, seq_len, rows):
        queries = torch.arange(start, min(start + rows, seq_len), device=device)[:, None]  # (r, 1)
        out[start:start + rows] = rule(None, None, queries, keys)
    return out


def attention_bias_ref(split_lens, modes, sample_lens, seq_len: int, dtype: torch.dtype) -> torch.Tensor:
    """(L, L) ``dtype``: 0 where :func:`attention_mask_ref` allows, -inf elsewhere."""
    allowed = attention_mask_ref(split_lens, modes, sample_lens, seq_len)
    bias = torch.zeros(seq_len, seq_len, dtype=dtype, device=split_lens.device)
    return bias.masked_fill_(~allowed, float("-inf"))


def _ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """create_block_mask's ordering of a (nb, nb) 0/1 block matrix: per row the count, and the
    active column indices ascending followed by the inactive ones ascending (stable argsort)."""
    dense = dense.to(torch.int32)
    order = torch.argsort(dense, dim=-1, descending=True, stable=True)
    return dense.sum(-1).to(torch.int32)[None, None], order.to(torch.int32)[None, None]


def block_classes_ref(split_lens, modes, sample_lens, seq_len: int, block_size: int):
    """(partial, full) bool (nb, nb) block matrices of the rule, rows = query blocks."""
    device, bs = split_lens.device, block_size
    nb = -(-seq_len // bs)
    split_end = torch.cumsum(split_lens, 0)
    sample_end = torch.cumsum(sample_lens, 0)
    nonnoise = modes != NOISE
    nn_end = torch.cumsum(split_lens * nonnoise, 0)
    noise_incl = torch.cumsum((~nonnoise).long(), 0)
    last_split = len(split_lens) - 1

    def nonnoise_before(x):  # non-noise tokens before positions x (0 <= x <= L)
        j = torch.searchsorted(split_end, x).clamp_(max=last_split)
        return nn_end[j] - torch.where(nonnoise[j], split_end[j] - x, 0)

    lo = torch.arange(nb, device=device) * bs  # (nb,) block starts
    hi = (lo + bs).clamp(max=seq_len)          # (nb,) block ends, clipped to L
    sp_lo = torch.searchsorted(split_end, lo, right=True)
    sp_last = torch.searchsorted(split_end, hi - 1, right=True)
    sam_lo = torch.searchsorted(sample_end, lo, right=True)
    sam_last = torch.searchsorted(sample_end, hi - 1, right=True)
    sample_start = sample_end[sam_lo] - sample_lens[sam_lo]
    split_start = split_end[sp_lo] - split_lens[sp_lo]
    mode_lo = modes[sp_lo]
    noise_before = noise_incl[sp_lo] - (~nonnoise[sp_lo]).long()
    noise_count = noise_incl[sp_last] - noise_before
    single = torch.searchsorted(noise_incl, noise_before + 1)
    noise_split = torch.where(noise_count == 0, -1, torch.where(noise_count > 1, -2, single))

    Q, K = (lambda t: t[:, None]), (lambda t: t[None, :])  # query-block rows, key-block columns
    r = torch.arange(nb, device=device)
    # keys after the queries: visible only through a full/noise split spanning both blocks
    after = (Q(sp_last) == K(sp_lo)) & (K(mode_lo) != CAUSAL)
    # keys before the queries: the first query's sample sees its own split from split_start on
    # and, before that, the non-noise tokens of the sample
    reach = torch.where(Q(sample_start) > K(lo), Q(nonnoise_before(sample_start)), K(nonnoise_before(lo)))
    before = (Q(sample_start) < K(hi)) & ((Q(split_start) < K(hi)) | (K(nonnoise_before(hi)) > reach))
    nonempty = torch.where(Q(r) == K(r), True, torch.where(K(r) > Q(r), after, before))

    whole = (hi - lo) == bs  # padding past L is masked, so a padded block is never full
    one_sample = (sam_lo == sam_last)
    full = (Q(whole) & K(whole) & Q(one_sample) & K(one_sample) & (Q(sam_lo) == K(sam_lo))
            & ((K(hi - 1) <= Q(lo)) | ((Q(sp_lo) == K(sp_last)) & (Q(mode_lo) != CAUSAL)))
            & ((K(noise_split) == -1)
               | (Q(sp_lo == sp_last) & (Q(sp_lo) == K(noise_split)))))
    full &= nonempty
    return nonempty & ~full, full


def block_mask_tensors_ref(split_lens, modes, sample_lens, seq_len: int, block_size: int):
    """The eight BlockMask tensors (kv_num_blocks, kv_indices, full_kv_*, q_*, full_q_*), int32."""
    partial, full = block_classes_ref(split_lens, modes, sample_lens, seq_len, block_size)
    return (*_ordered(partial), *_ordered(full), *_ordered(partial.T), *_ordered(full.T))
