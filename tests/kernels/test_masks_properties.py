"""Hypothesis property tests of the packing masks: the masking spec (docs/ARCHITECTURE.md) as invariants.

Random packings: 1-8 samples of 1-12 splits each, split lengths 1-300, any mode mix, block sizes
16/64/128. The total length is capped (MAX_L) so torch's eager create_block_mask and the dense
references stay cheap; HYPOTHESIS_PROFILE=dev raises the cap and the example count.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import and_masks, create_block_mask, or_masks

from procpaint.kernels import _masks_ref as ref
from procpaint.kernels import masks as P

MAX_L = 4096 if os.environ.get("HYPOTHESIS_PROFILE") == "dev" else 512
MODE_NAMES = list(P.MODES)


@st.composite
def packings(draw, max_len: int = MAX_L, modes=MODE_NAMES):
    """(split_lens, attn_modes, sample_lens) with sum <= max_len."""
    splits, names, samples, left = [], [], [], max_len
    for _ in range(draw(st.integers(1, 8))):
        if left == 0:
            break
        n = 0
        for _ in range(draw(st.integers(1, 12))):
            if left == 0:
                break
            length = draw(st.integers(1, min(300, left)))
            splits.append(length)
            names.append(draw(st.sampled_from(modes)))
            n, left = n + length, left - length
        samples.append(n)
    return splits, names, samples


block_sizes = st.sampled_from([16, 64, 128])
# `native` is a stateless guard, safe to share across generated examples
with_fixture = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                               HealthCheck.data_too_large])
# torch's eager create_block_mask costs ~0.1-0.5 s per example here: fewer of those in `ci`
fewer = settings(max_examples=max(10, settings.default.max_examples // 2))
fewer_with_fixture = settings(with_fixture, max_examples=fewer.max_examples)


def token_ids(splits, samples):
    """Per-token split index and sample index, (L,) each."""
    split_id = torch.repeat_interleave(torch.arange(len(splits)), torch.tensor(splits))
    sample_id = torch.repeat_interleave(torch.arange(len(samples)), torch.tensor(samples))
    return split_id, sample_id


def bagel_rule(splits, names, samples):
    """A literal transcription of BAGEL's create_sparse_mask, independent of procpaint's rule."""
    per_token = lambda keep: torch.tensor(
        sum(([i if keep(m) else -1] * n for i, (n, m) in enumerate(zip(splits, names))), []))
    fn = per_token(lambda m: m != "causal")
    nz = per_token(lambda m: m == "noise")
    doc = torch.cat([torch.full((n,), i) for i, n in enumerate(samples, start=1)])
    causal = lambda b, h, q, k: q >= k
    full_and_noise = lambda b, h, q, k: (fn[q] == fn[k]) & (fn[q] >= 0)
    remove_noise = lambda b, h, q, k: ~((nz[k] >= 0) & (nz[q] != nz[k]))
    sample = lambda b, h, q, k: doc[q] == doc[k]
    return and_masks(or_masks(causal, full_and_noise), remove_noise, sample)


@given(packings())
def test_reference_is_bagel_rule(p):
    idx = torch.arange(sum(p[0]))
    zero = torch.zeros((), dtype=torch.long)
    expected = bagel_rule(*p)(zero, zero, idx[:, None], idx[None, :])  # broadcast over (L, L)
    assert torch.equal(P.attention_mask_ref(*p), expected)


@with_fixture
@given(packings())
def test_mask_kernel_equals_reference(native, p):
    mask = P.attention_mask(*p)
    assert mask.dtype == torch.bool and mask.shape == (sum(p[0]),) * 2
    assert torch.equal(mask, P.attention_mask_ref(*p))


@with_fixture
@given(packings(max_len=MAX_L // 2),
       st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64]))
def test_bias_equals_mask(native, p, dtype):
    mask = P.attention_mask_ref(*p)
    bias = P.attention_bias(*p, dtype=dtype)
    assert bias.dtype == dtype
    assert torch.equal(bias == 0, mask) and torch.isneginf(bias[~mask]).all()


@given(packings())
def test_mask_invariants(p):
    splits, names, samples = p
    mask = P.attention_mask(*p)
    split_id, sample_id = token_ids(splits, samples)
    same_sample = sample_id[:, None] == sample_id[None, :]
    assert not (mask & ~same_sample).any(), "attention across samples"
    assert mask.diagonal().all(), "a query must always see itself (no empty softmax row)"
    for j, mode in enumerate(names):
        inside = split_id == j
        if mode in ("full", "noise"):  # the whole split is mutually visible
            assert mask[inside][:, inside].all()
        if mode == "noise":  # nothing outside a noise split sees into it
            assert not mask[~inside][:, inside].any()


@given(packings(modes=["causal"]))
def test_causal_only_is_block_diagonal_lower_triangular(p):
    _, sample_id = token_ids(p[0], p[2])
    L = sum(p[0])
    expected = torch.ones(L, L, dtype=torch.bool).tril() & (sample_id[:, None] == sample_id[None, :])
    assert torch.equal(P.attention_mask(*p), expected)


def assert_block_masks_equal(got, want):
    for name in P._BLOCK_TENSORS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype == torch.int32, name
        assert torch.equal(a, b), f"{name} differs:\n{a}\nvs create_block_mask's\n{b}"
    assert got.seq_lengths == want.seq_lengths and got.BLOCK_SIZE == want.BLOCK_SIZE


@fewer_with_fixture
@given(packings(), block_sizes)
def test_block_mask_equals_create_block_mask(native, p, block_size):
    L = sum(p[0])
    want = create_block_mask(P.mask_mod(*p), None, None, L, L, device="cpu", BLOCK_SIZE=block_size)
    assert_block_masks_equal(P.block_mask(*p, block_size=block_size), want)
    assert_block_masks_equal(P.block_mask_ref(*p, block_size=block_size), want)


@given(packings(), block_sizes)
def test_block_mask_dense_agrees_with_mask(p, block_size):
    L = sum(p[0])
    nb = -(-L // block_size)
    mask = torch.zeros(nb * block_size, nb * block_size, dtype=torch.bool)
    mask[:L, :L] = P.attention_mask(*p)
    per_block = mask.view(nb, block_size, nb, block_size).any(3).any(1)  # (nb, nb) any allowed
    dense = P.block_mask(*p, block_size=block_size).to_dense()[0, 0]
    assert torch.equal(dense.bool(), per_block)


@fewer
@given(packings(max_len=96))
def test_block_classes_ref_on_tiny_blocks(p):
    """Block size 1 and 3: classes must match the mask element- and tile-wise."""
    t = validate_tensors(p)
    L = sum(p[0])
    partial, full = ref.block_classes_ref(*t, L, 1)
    assert not partial.any() and torch.equal(full, P.attention_mask(*p))
    want = create_block_mask(P.mask_mod(*p), None, None, L, L, device="cpu", BLOCK_SIZE=3)
    assert_block_masks_equal(P.block_mask_ref(*p, block_size=3), want)


def validate_tensors(p):
    return P.validate(*p).tensors(torch.device("cpu"))


@st.composite
def broken_packings(draw):
    """A valid packing with exactly one defect, and the phrase its ValueError must contain."""
    splits, names, samples = (list(x) for x in draw(packings(max_len=400)))
    kind = draw(st.sampled_from(["zero", "negative", "mode", "sum", "cross", "count"]))
    i = draw(st.integers(0, len(splits) - 1))
    if kind in ("zero", "negative"):
        splits[i] = 0 if kind == "zero" else -splits[i]
        return (splits, names, samples), "must be positive"
    if kind == "mode":
        names[i] = draw(st.sampled_from(["Causal", "bidirectional", "", "noisy"]))
        return (splits, names, samples), "is not one of"
    if kind == "count":
        return (splits, names + ["causal"], samples), "entries for"
    if kind == "sum":
        samples[-1] += draw(st.integers(1, 5))
        return (splits, names, samples), "!="
    # cross: cut a split of length >= 2 in two samples' worth, keeping both sums equal
    wide = [j for j, n in enumerate(splits) if n >= 2]
    if not wide:
        splits, names, samples = [2], ["causal"], [1, 1]
        return (splits, names, samples), "crosses the boundary"
    j = wide[0]
    start = sum(splits[:j])
    cut = start + draw(st.integers(1, splits[j] - 1))
    ends, acc = [], 0
    for n in samples:
        acc += n
        ends.append(acc)
    ends = sorted(set(ends) | {cut})
    samples = [b - a for a, b in zip([0] + ends[:-1], ends)]
    return (splits, names, samples), "crosses the boundary"


@given(broken_packings())
def test_bad_inputs_raise_value_error(case):
    args, phrase = case
    for fn in (P.attention_mask, P.attention_bias, P.block_mask, P.mask_mod, P.attention_mask_ref):
        with pytest.raises(ValueError, match=phrase):
            fn(*args)


@given(packings(max_len=MAX_L // 2))
def test_mean_keys_per_query_counts_the_mask(p):
    """The O(splits) count perf/mfu uses equals the mask's own count of attended pairs."""
    want = P.attention_mask_ref(*p).sum().item() / sum(p[0])
    assert P.mean_keys_per_query(*p) == pytest.approx(want, rel=1e-12)


@st.composite
def vit_packings(draw, max_len: int = MAX_L):
    """Packings shaped like the planner's with the ViT path (model.vit): text, then images as
    [noise] + full (VAE clean copy) + full (ViT split), and which splits are ViT splits."""
    splits, names, samples, vit, left = [], [], [], [], max_len
    for _ in range(draw(st.integers(1, 4))):
        n = 0
        for _ in range(draw(st.integers(1, 4))):
            generated = draw(st.booleans())
            parts = [("causal", draw(st.integers(1, 20)), False)]
            vae = draw(st.integers(3, 40))
            parts += [("noise", vae, False)] if generated else []
            parts += [("full", vae, False), ("full", draw(st.integers(3, 40)), True)]
            need = sum(p[1] for p in parts)
            if need > left:
                break
            for mode, length, is_vit in parts:
                splits.append(length)
                names.append(mode)
                vit.append(is_vit)
            n, left = n + need, left - need
        if n == 0:
            break
        samples.append(n)
    if not samples:
        splits, names, samples, vit = [1], ["causal"], [1], [False]
    return (splits, names, samples), vit


@with_fixture
@given(vit_packings(), block_sizes)
def test_vit_splits_follow_the_rule(native, case, block_size):
    """Adjacent full splits (VAE clean copy, then its ViT split) stay two splits: the ViT split sees
    the clean copy and itself, the clean copy does not see the ViT split, nothing sees a noise split."""
    p, vit = case
    splits, names, samples = p
    mask = P.attention_mask(*p)
    assert torch.equal(mask, P.attention_mask_ref(*p))
    idx = torch.arange(sum(splits))
    zero = torch.zeros((), dtype=torch.long)
    assert torch.equal(mask, bagel_rule(*p)(zero, zero, idx[:, None], idx[None, :]))
    split_id, sample_id = token_ids(splits, samples)
    for j, is_vit in enumerate(vit):
        if not is_vit:
            continue
        me, clean = split_id == j, split_id == j - 1
        assert names[j - 1] == "full" and mask[me][:, me].all() and mask[me][:, clean].all()
        assert not mask[clean][:, me].any()
        if j >= 2 and names[j - 2] == "noise":
            assert not mask[me][:, split_id == j - 2].any()
        nxt = split_id == j + 1
        if nxt.any() and sample_id[nxt][0] == sample_id[me][0]:   # the text after the image sees both
            assert mask[nxt][:, me].all() and mask[nxt][:, clean].all()
    L = sum(splits)
    want = create_block_mask(P.mask_mod(*p), None, None, L, L, device="cpu", BLOCK_SIZE=block_size)
    assert_block_masks_equal(P.block_mask(*p, block_size=block_size), want)
