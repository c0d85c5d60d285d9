"""ViT splits in packs (model.vit, issue 13): BAGEL's layout, position ids and routing; vit off unchanged."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
import torch

from procpaint.model.vit import vit_grid, vit_inputs, vit_patches, vit_position_ids
from procpaint.sequence.packing import Packer
from procpaint.sequence.plan import CAUSAL, FULL, NOISE, SequencePlanner, ViTSplits
from procpaint.sequence.tokenizer import TextTokenizer, build_word_level
from procpaint.sequence.types import ImageSegment, Sample, TextSegment

WORDS = "draw a red blue green circle square the is too small left of right big".split()
TOK = TextTokenizer(build_word_level(WORDS))
PPT = 2
VIT = ViTSplits(patch_size=4, max_per_side=8)


def _images(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return lambda h, w: torch.rand(3, h, w, generator=g) * 2 - 1


def _samples() -> list[Sample]:
    im = _images()
    out = []
    for i in range(6):
        out.append(Sample([TextSegment("draw a red circle left of the blue square", role="prompt"),
                           TextSegment("<ins>draw a red circle</ins>", loss=True, role="plan"),
                           ImageSegment(im(8, 8), loss=True),
                           TextSegment("the circle is too small", loss=True, role="critique"),
                           TextSegment("<refine>draw a big circle</refine>", loss=True, role="refine"),
                           ImageSegment(im(8, 8), loss=True)], eos=True, id=f"m{i}"))
        out.append(Sample([TextSegment("draw a blue square", role="instruction"), ImageSegment(im(4, 6)),
                           TextSegment("the square is small", loss=True, role="critique")], kind="alignment",
                          id=f"a{i}"))
    return out


def _digest(b) -> str:
    h = hashlib.sha256()
    for name in ("seq_len", "sample_lens", "split_lens", "attn_modes", "num_real_tokens", "num_samples"):
        h.update(repr(getattr(b, name)).encode())
    for name in ("text_ids", "text_indexes", "position_ids", "latent_indexes", "latent_image_ids",
                 "latent_patch_ids", "latent_timesteps", "latent_noised", "images", "ce_indexes", "ce_labels"):
        t = getattr(b, name)
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _packs(vit, **kw):
    kw = dict(pixels_per_token=PPT, max_tokens=160, overflow_buffer=2, p_drop_text=0.3, p_drop_image=0.3,
              seed=5) | kw
    return list(Packer(TOK, vit=vit, **kw).pack_stream(_samples()))


def test_vit_off_packs_are_bit_identical_to_before():
    """Digests of these packs as the packer made them before ViT splits existed (commit 5beca3b)."""
    packs = _packs(None)
    assert [_digest(b) for b in packs] == ["6d08349932464fad", "b3855750c867a0c2", "0b28eefe1062d25e",
                                           "a39fbba1e98ed5d8", "cacf33359a6b8cdf", "42a3dc08c7a24e08"]
    for b in packs:
        assert b.vit_indexes.numel() == b.vit_patches.numel() == b.vit_position_ids.numel() == 0
        assert b.vit_seqlens == [] and b.und_indexes is b.text_indexes


def _one(sample: Sample, vit=VIT, **kw):
    kw = dict(pixels_per_token=PPT, max_tokens=400) | kw
    (b,) = list(Packer(TOK, vit=vit, **kw).pack_stream([sample]))
    return b


def _splits(b):
    """(start, length, mode) of every split of the pack."""
    starts = np.cumsum([0, *b.split_lens[:-1]]).tolist()
    return list(zip(starts, b.split_lens, b.attn_modes))


def test_vit_split_follows_each_clean_copy_with_the_next_position_id():
    im = _images(1)
    gen, ctx = im(8, 8), im(8, 12)
    sample = Sample([TextSegment("draw a red circle", role="prompt"),
                     TextSegment("<ins>draw a red circle</ins>", loss=True, role="plan"),
                     ImageSegment(gen, loss=True),
                     TextSegment("the circle is too small", loss=True, role="critique"),
                     ImageSegment(ctx),
                     TextSegment("the square is big", loss=True, role="critique")], eos=True)
    off, on = _one(sample, vit=None), _one(sample)
    # vit on: prompt, plan, noise, clean, ViT, critique, context clean, ViT, critique, padding
    modes = [m for _, _, m in _splits(on)]
    assert modes == [CAUSAL, CAUSAL, NOISE, FULL, FULL, CAUSAL, FULL, FULL, CAUSAL, CAUSAL]
    grids = [(2, 2), (2, 3)]                                   # 8 / 4 and 12 / 4 patches per side
    vit_splits = [_splits(on)[4], _splits(on)[7]]
    assert [n for _, n, _ in vit_splits] == [h * w + 2 for h, w in grids]
    assert on.vit_seqlens == [h * w for h, w in grids]
    assert on.num_real_tokens == off.num_real_tokens + sum(h * w + 2 for h, w in grids)

    pos = on.position_ids
    (s_noise, _, _), (s_clean, n_clean, _), (s_vit, n_vit, _), (s_text, _, _) = _splits(on)[2:6]
    assert pos[s_noise] == pos[s_clean]                        # the clean copy shares the noised id
    assert (pos[s_vit:s_vit + n_vit] == pos[s_clean] + 1).all()   # the ViT split: the next id, shared
    assert pos[s_text] == pos[s_clean] + 2                     # then text goes on after it
    assert pos[on.num_real_tokens - 1] == pos_of_last(off) + 2  # two ViT splits, one id each

    # routing: ViT tokens are understanding tokens, never latent or CE positions
    vit = set(on.vit_indexes.tolist())
    assert vit == set(range(s_vit + 1, s_vit + n_vit - 1)) | set(range(_splits(on)[7][0] + 1,
                                                                         _splits(on)[7][0] + 7))
    und, gen_ = on.und_indexes.tolist(), on.gen_indexes.tolist()
    assert und == sorted(und) and vit <= set(und) and not vit & set(gen_)
    assert sorted(und + gen_) == list(range(on.seq_len))
    assert not vit & set(on.ce_indexes.tolist()) and not vit & set(on.text_indexes.tolist())
    assert on.text_ids[on.text_indexes == s_vit].item() == TOK.vision_start_id
    assert on.text_ids[on.text_indexes == s_vit + n_vit - 1].item() == TOK.vision_end_id
    # what follows the image is predicted by its ViT split's <|vision_end|>, not the clean copy's
    first_critique = TOK.encode("the circle is too small")[0]
    predictor = on.ce_indexes[on.ce_labels == first_critique].tolist()[0]   # ("the": both critiques)
    assert predictor == s_vit + n_vit - 1
    assert s_clean + n_clean - 1 not in on.ce_indexes.tolist()
    assert len(on.ce_labels) == len(off.ce_labels) and torch.equal(on.ce_labels, off.ce_labels)

    # the patches are the images' own (they tile: no resampling), ids r * S + c
    want = torch.cat([vit_patches(gen[None], 4), vit_patches(ctx[None], 4)])
    assert torch.equal(on.vit_patches, want)
    ids = torch.cat([vit_position_ids(h, w, VIT.max_per_side) for h, w in grids])
    assert torch.equal(on.vit_position_ids, ids)
    # everything of the VAE path is what it was, shifted by the ViT splits before it
    assert torch.equal(on.images, off.images) and torch.equal(on.latent_noised, off.latent_noised)
    assert torch.equal(on.latent_patch_ids, off.latent_patch_ids)


def pos_of_last(b) -> int:
    return int(b.position_ids[b.num_real_tokens - 1])


def test_an_image_nothing_reads_has_no_vit_split():
    sample = Sample([TextSegment("draw a red circle", role="prompt"),
                     ImageSegment(_images(2)(8, 8), loss=True, clean_copy=False)])
    b = _one(sample)
    assert b.vit_seqlens == [] and [m for _, _, m in _splits(b)] == [CAUSAL, NOISE, CAUSAL]


def test_dropped_context_image_skips_both_position_ids():
    im = _images(3)
    sample = Sample([TextSegment("draw a blue square", role="instruction"), ImageSegment(im(8, 8)),
                     TextSegment("the square is small", loss=True, role="critique")])
    planner = SequencePlanner(TOK, PPT, vit=VIT)
    lay = planner.plan(sample, drop_image=True).layout()
    n_instr = len(TOK.encode("draw a blue square"))
    assert lay.position_ids[n_instr] == n_instr + 2          # the VAE and the ViT split's ids
    assert SequencePlanner(TOK, PPT).plan(sample, drop_image=True).layout().position_ids[n_instr] == n_instr + 1
    kept = planner.plan(sample).layout()
    assert kept.position_ids[-1] == lay.position_ids[-1]       # the text after sits where it would


@pytest.mark.parametrize("size", [(8, 8), (6, 10), (13, 3), (40, 9)])
def test_lengths_without_a_plan_and_resampled_images(size):
    """num_tokens (no tensors) equals the plan; an image that does not tile the ViT grid is resampled to it."""
    vit = ViTSplits(patch_size=3, max_per_side=4)
    img = _images(4)(*size)
    sample = Sample([TextSegment("draw a red circle", role="prompt"), ImageSegment(img, loss=True),
                     TextSegment("the circle is small", loss=True), ImageSegment(img)], eos=True)
    planner = SequencePlanner(TOK, 1, vit=vit)
    for drop in (False, True):
        assert planner.num_tokens(sample, drop_image=drop) == planner.plan(sample, drop_image=drop).num_tokens
    h, w = vit_grid(*size, 3, 4)
    assert 1 <= h <= 4 and 1 <= w <= 4
    if size == (40, 9):
        assert (h, w) == (4, 1)                                # long side capped at p * S, aspect kept
    b = _one(sample, vit=vit, pixels_per_token=1, max_tokens=2000)
    patches, ids, grid = vit_inputs(img, 3, 4)
    assert grid == (h, w) and b.vit_seqlens == [h * w, h * w]
    assert torch.equal(b.vit_patches, torch.cat([patches, patches]))
    assert b.vit_patches.abs().max() <= 1


def test_random_streams_keep_the_pack_invariants_with_vit():
    rng = random.Random(0)
    im = _images(5)
    samples = []
    for i in range(20):
        n = rng.randint(1, 3)
        segs = [TextSegment("draw a red circle", role="prompt")]
        for _ in range(n):
            segs += [TextSegment("<ins>draw a circle</ins>", loss=True, role="plan"),
                     ImageSegment(im(4 * rng.randint(1, 3), 4 * rng.randint(1, 3)), loss=rng.random() < 0.7),
                     TextSegment("the circle is small", loss=True, role="critique")]
        samples.append(Sample(segs, eos=True, id=f"s{i}"))
    packer = Packer(TOK, pixels_per_token=PPT, max_tokens=300, overflow_buffer=4, p_drop_image=0.3,
                    p_drop_text=0.3, vit=VIT, seed=1)
    for b in packer.pack_stream(samples):
        assert sum(b.split_lens) == b.seq_len == sum(b.sample_lens)
        assert b.und_indexes.numel() + b.gen_indexes.numel() == b.seq_len
        assert b.vit_indexes.numel() == sum(b.vit_seqlens) == b.vit_patches.shape[0] == b.vit_position_ids.numel()
        assert b.vit_patches.shape[1] == 3 * VIT.patch_size**2
        covered = torch.zeros(b.seq_len, dtype=torch.int64)
        for idx in (b.text_indexes, b.latent_indexes, b.vit_indexes):
            covered[idx] += 1
        assert (covered == 1).all()                            # every position exactly one kind
        # every ViT token sits in a full split whose first/last positions are the vision markers
        for start, n, mode in _splits(b):
            inside = (b.vit_indexes >= start) & (b.vit_indexes < start + n)
            if inside.any():
                assert mode == FULL and inside.sum() == n - 2
                assert (b.position_ids[start:start + n] == b.position_ids[start]).all()


def test_packer_state_remembers_the_vit_geometry():
    packer = Packer(TOK, pixels_per_token=PPT, max_tokens=400, vit=VIT)
    packer.add(_samples()[0])
    state = packer.state_dict(include_samples=True)
    with pytest.raises(ValueError, match="vit"):
        Packer(TOK, pixels_per_token=PPT, max_tokens=400).load_state_dict(state)
    Packer(TOK, pixels_per_token=PPT, max_tokens=400, vit=VIT).load_state_dict(state)


def test_vit_geometry_comes_from_the_model_config():
    from procpaint.model import model_config

    assert ViTSplits.from_model_config(model_config("debug")) is None
    assert ViTSplits.from_model_config(model_config("bagel-7b")) == ViTSplits(14, 70)
    with pytest.raises(ValueError, match="patch size"):
        ViTSplits(0, 4)
