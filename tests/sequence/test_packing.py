"""The streaming packer: packed-batch invariants, skips, determinism, CFG dropout, resume."""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from procpaint.kernels.flow import sample_timesteps
from procpaint.sequence.packing import (
    Packer,
    SkippedSamplesWarning,
    collate_packed,
    pack_stream,
)
from procpaint.sequence.plan import CAUSAL, FULL, NOISE, SequencePlanner
from procpaint.sequence.tokenizer import TextTokenizer, build_word_level
from procpaint.sequence.types import ImageSegment, PackedBatch, Sample, TextSegment

WORDS = "draw a red blue green circle square the is too small left of right big".split()
TOK = TextTokenizer(build_word_level(WORDS))
PPT = 2


def text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def image(rng: random.Random, side: tuple[int, int] = (1, 3)) -> torch.Tensor:
    return torch.rand(3, rng.randint(*side) * PPT, rng.randint(*side) * PPT)


def trajectory(rng: random.Random, i: int, rounds: tuple[int, int] = (1, 3)) -> Sample:
    """Multiturn, conflict or alignment shaped sample with small random texts and images."""
    kind = rng.choice(["multiturn", "multiturn", "conflict", "alignment"])
    if kind == "alignment":
        segs = [TextSegment(text(rng, 2, 6), role="instruction"), ImageSegment(image(rng)),
                TextSegment(text(rng, 2, 8), loss=True, role="critique")]
        return Sample(segs, kind=kind, id=f"a{i}")
    segs = [TextSegment(text(rng, 2, 8), role="prompt")]
    for _ in range(rng.randint(*rounds)):
        gen = kind == "multiturn"
        segs += [TextSegment("<ins>" + text(rng, 1, 5) + "</ins>", loss=gen, role="plan"),
                 ImageSegment(image(rng), loss=gen), TextSegment(text(rng, 1, 6), loss=True, role="critique")]
        if rng.random() < 0.5:
            segs += [TextSegment("<refine>" + text(rng, 1, 4) + "</refine>", loss=gen, role="refine"),
                     ImageSegment(image(rng), loss=gen)]
    return Sample(segs, eos=kind == "multiturn", kind=kind, id=f"t{i}")


def stream(seed: int, n: int, **kw) -> list[Sample]:
    rng = random.Random(seed)
    return [trajectory(rng, i, **kw) for i in range(n)]


def check_batch(b: PackedBatch, samples: list[Sample], max_tokens: int) -> None:
    """Every layout rule of docs/ARCHITECTURE.md on one packed batch (``samples``: the stream, by arrival)."""
    L = b.seq_len
    assert L == max_tokens == sum(b.sample_lens) == sum(b.split_lens) == len(b.position_ids)
    assert len(b.split_lens) == len(b.attn_modes) and min(b.split_lens) >= 1
    assert b.num_real_tokens == sum(b.sample_lens[:b.num_samples])
    # No split crosses a sample boundary; padding is one causal sample.
    bounds = set(np.cumsum(b.split_lens).tolist())
    assert set(np.cumsum(b.sample_lens).tolist()) <= bounds
    if len(b.sample_lens) > b.num_samples:
        assert b.attn_modes[-1] == CAUSAL and b.split_lens[-1] == b.sample_lens[-1]
    # Routing: text / latent indexes partition [0, L); und == text, gen == latent.
    assert torch.equal(torch.sort(torch.cat([b.text_indexes, b.latent_indexes])).values, torch.arange(L))
    assert torch.equal(b.und_indexes, b.text_indexes) and torch.equal(b.gen_indexes, b.latent_indexes)
    ids = torch.full((L,), -1, dtype=torch.int64)
    ids[b.text_indexes] = b.text_ids
    split_of = torch.repeat_interleave(torch.arange(len(b.split_lens)), torch.tensor(b.split_lens))
    sample_of = torch.repeat_interleave(torch.arange(len(b.sample_lens)), torch.tensor(b.sample_lens))
    modes = [b.attn_modes[s] for s in split_of.tolist()]
    # Latent tokens are exactly the interior of image splits; MSE tokens exactly the noised ones.
    starts = np.cumsum([0, *b.split_lens[:-1]])
    interior = [o for m, s, n in zip(b.attn_modes, starts, b.split_lens) if m != CAUSAL
                for o in range(s + 1, s + n - 1)]
    assert b.latent_indexes.tolist() == interior
    assert torch.equal(b.latent_noised, torch.tensor([modes[i] == NOISE for i in interior], dtype=torch.bool))
    assert (b.latent_timesteps[~b.latent_noised] == 0).all()
    assert ((b.latent_timesteps >= 0) & (b.latent_timesteps <= 1)).all()
    # Noised copy then its clean copy: same image, patches and position id; one t per noise split.
    lat_pos = {int(i): k for k, i in enumerate(b.latent_indexes)}
    t_noise = []  # one timestep per generated image, drawn independently (distinct a.s.)
    for k, (m, s, n) in enumerate(zip(b.attn_modes, starts, b.split_lens)):
        if m == NOISE:
            assert b.attn_modes[k + 1] == FULL and b.split_lens[k + 1] == n
            a, c = lat_pos[s + 1], lat_pos[s + n + 1]
            for f in (b.latent_image_ids, b.latent_patch_ids):
                assert torch.equal(f[a:a + n - 2], f[c:c + n - 2])
            assert (b.position_ids[s:s + 2 * n] == b.position_ids[s]).all()
            assert (b.latent_timesteps[a:a + n - 2] == b.latent_timesteps[a]).all()
            t_noise.append(float(b.latent_timesteps[a]))
        if m != CAUSAL:
            assert ids[s] == TOK.vision_start_id and ids[s + n - 1] == TOK.vision_end_id
            assert (b.position_ids[s:s + n] == b.position_ids[s]).all()
    assert len(set(t_noise)) == len(t_noise)
    # Every target is the token at the next clean-stream position of its sample (or EOS at the end).
    clean = [i for i in range(L) if modes[i] != NOISE]
    succ = dict(zip(clean[:-1], clean[1:]))
    for i, lab in zip(b.ce_indexes.tolist(), b.ce_labels.tolist()):
        assert modes[i] != NOISE and sample_of[i] < b.num_samples
        j = succ.get(i)
        if j is not None and sample_of[j] == sample_of[i]:
            assert ids[j] == lab
        else:
            assert lab == TOK.eos_id
    # Each sample: positions restart at 0; image pixels match the stacked rows.
    offs = np.cumsum([0, *b.sample_lens[:-1]]).tolist()
    for k, arrival in enumerate(b.stats["arrivals"]):
        assert b.position_ids[offs[k]] == 0 or samples[arrival].segments[0].role == "image"
        assert b.stats["sample_ids"][k] == samples[arrival].id
    for row in b.latent_image_ids.unique().tolist():
        assert b.images[row].abs().max() <= 1


@given(seed=st.integers(0, 10_000), max_tokens=st.integers(40, 300), buffer=st.integers(0, 6),
       p=st.sampled_from([0.0, 0.5]))
def test_packed_batches_follow_the_layout(seed, max_tokens, buffer, p):
    samples = stream(seed, 12)
    packer = Packer(TOK, pixels_per_token=PPT, max_tokens=max_tokens, overflow_buffer=buffer,
                    p_drop_text=p, p_drop_image=p, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedSamplesWarning)
        batches = list(packer.pack_stream(samples))
    for b in batches:
        check_batch(b, samples, max_tokens)
    # Each kept sample in exactly one pack, skipped ones counted.
    packed = [a for b in batches for a in b.stats["arrivals"]]
    c = packer.counters
    assert len(packed) == len(set(packed)) == c["packed_samples"]
    assert len(packed) + c["skipped_too_long"] + c["skipped_empty"] == len(samples)
    if p == 0.0:
        planner = SequencePlanner(TOK, PPT)
        too_long = [i for i, s in enumerate(samples) if planner.num_tokens(s) > max_tokens]
        assert c["skipped_too_long"] == len(too_long) and not set(too_long) & set(packed)
        for b in batches:
            want = [planner.num_tokens(samples[a]) for a in b.stats["arrivals"]]
            assert b.sample_lens[:b.num_samples] == want


def test_images_padded_and_patch_ids_in_padded_grid():
    small, big = torch.rand(3, 2, 4), torch.rand(3, 6, 6)  # grids 1x2 and 3x3
    s = Sample([TextSegment("red"), ImageSegment(small), ImageSegment(big, loss=True)], id="x")
    (b,) = pack_stream([s], TOK, pixels_per_token=PPT, max_tokens=64)
    assert b.images.shape == (2, 3, 6, 6)
    assert torch.equal(b.images[0, :, :2, :4], small) and (b.images[0, :, 2:] == 0).all()
    assert b.latent_patch_ids.tolist() == [0, 1] + list(range(9)) * 2   # row * 3 + col
    assert b.latent_image_ids.tolist() == [0, 0] + [1] * 18


def test_efficiency_beats_padding_to_longest():
    samples = stream(1, 300, rounds=(1, 5))
    batches = list(pack_stream(samples, TOK, pixels_per_token=PPT, max_tokens=512, overflow_buffer=32))
    real = sum(b.num_real_tokens for b in batches)
    packed_eff = real / sum(b.seq_len for b in batches)
    padded_eff = real / sum(b.stats["pad_to_longest_tokens"] for b in batches)
    assert packed_eff >= padded_eff and packed_eff > 0.9
    for b in batches[:-3]:  # all but the flushed tail
        assert b.stats["efficiency"] > 0.8


def test_skipped_samples_are_counted_and_warned_once():
    rng = random.Random(0)
    long = Sample([TextSegment(" ".join(["red"] * 90))], id="long")
    empty = Sample([TextSegment("")], id="empty")
    samples = [trajectory(rng, 0), long, empty, trajectory(rng, 1), long]
    packer = Packer(TOK, pixels_per_token=PPT, max_tokens=100, max_tokens_per_sample=80)
    with pytest.warns(SkippedSamplesWarning) as record:
        batches = list(packer.pack_stream(samples))
    msgs = [str(w.message) for w in record]
    assert len(msgs) == 2 and "skipping sample long (has 90 tokens > max_tokens_per_sample=80)" in msgs[0]
    assert "skipped 3 of 5 samples (2 longer than max_tokens_per_sample=80, 1 empty)" in msgs[1]
    assert batches[-1].stats["skipped_total"] == 3 and packer.counters["packed_samples"] == 2


def test_deterministic_for_a_seed():
    samples = stream(3, 40)
    run = lambda seed: list(pack_stream(samples, TOK, pixels_per_token=PPT, max_tokens=200,  # noqa: E731
                                        p_drop_text=0.3, p_drop_image=0.3, seed=seed))
    a, b, c = run(5), run(5), run(6)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.sample_lens == y.sample_lens and x.stats == y.stats
        for name in ("text_ids", "position_ids", "ce_labels", "latent_timesteps", "images"):
            assert torch.equal(getattr(x, name), getattr(y, name))
    assert not all(torch.equal(x.latent_timesteps, y.latent_timesteps) for x, y in zip(a, c))


def test_dropout_decisions_do_not_depend_on_budget_or_buffer():
    samples = stream(4, 50)

    def lengths(**kw):
        packs = pack_stream(samples, TOK, pixels_per_token=PPT, p_drop_text=0.5, p_drop_image=0.5, seed=1,
                            **kw)
        return sorted((a, n) for b in packs for a, n in zip(b.stats["arrivals"], b.sample_lens))

    assert lengths(max_tokens=200, overflow_buffer=0) == lengths(max_tokens=400, overflow_buffer=9)


def test_cfg_dropout_rates_match_p():
    rng = random.Random(7)
    img = torch.rand(3, 2, 2)
    samples = [Sample([TextSegment("draw a circle", role="prompt"), ImageSegment(img),
                       TextSegment("red", loss=True, role="plan")], id=f"c{i}") for i in range(3000)]
    rng.shuffle(samples)
    packer = Packer(TOK, pixels_per_token=PPT, max_tokens=4000, p_drop_text=0.3, p_drop_image=0.1, seed=11)
    lens = [n for b in packer.pack_stream(samples) for n in b.sample_lens[:b.num_samples]]
    c = packer.counters
    for key, elig, p in (("dropped_text", "text_droppable", 0.3), ("dropped_image", "image_droppable", 0.1)):
        sigma = math.sqrt(p * (1 - p) / c[elig])
        assert abs(c[key] / c[elig] - p) < 4 * sigma, (key, c[key], c[elig])
    # Lengths agree with the decisions: 3 prompt tokens and a 3-token context image go away.
    assert lens.count(7) == 3000 - c["dropped_text"] - c["dropped_image"] + lens.count(1)
    assert lens.count(1) <= c["dropped_text"]


def test_timesteps_follow_the_shifted_logit_normal():
    """One t per generated image; quantiles match sigmoid(N(0,1)) shifted by s (fixed seed)."""
    img = torch.rand(3, 2, 2)
    samples = [Sample([TextSegment("red"), ImageSegment(img, loss=True), ImageSegment(img, loss=True)])
               for _ in range(1000)]
    packs = pack_stream(samples, TOK, pixels_per_token=PPT, max_tokens=90, timestep_shift=3.0, seed=4)
    t = torch.cat([b.latent_timesteps[b.latent_noised] for b in packs])  # 1x1 grid: 1 latent per image
    assert t.numel() == 2000 and len(set(t.tolist())) == 2000
    ref = sample_timesteps(200_000, shift=3.0, generator=torch.Generator().manual_seed(0))
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    assert torch.allclose(torch.quantile(t, q), torch.quantile(ref, q), atol=0.03)


def test_no_sample_starves():
    """51 cannot pair with the 50s (budget 100): fullest-bin-first would hold it forever."""
    samples = [Sample([TextSegment(" ".join(["red"] * 51))], id="odd")]
    samples += [Sample([TextSegment(" ".join(["red"] * 50))], id=f"e{i}") for i in range(60)]
    packer = Packer(TOK, pixels_per_token=PPT, max_tokens=100, overflow_buffer=4, max_wait_packs=5)
    for k, b in enumerate(packer.pack_stream(samples)):
        if 0 in b.stats["arrivals"]:
            assert k <= 6
            break
    else:
        raise AssertionError("the 51-token sample was never packed")


@pytest.mark.parametrize("include_samples", [False, True])
def test_state_dict_resumes_exactly(include_samples):
    samples = stream(9, 60)
    kw = dict(pixels_per_token=PPT, max_tokens=150, overflow_buffer=5, p_drop_text=0.4, p_drop_image=0.4,
              seed=2)
    ref = list(Packer(TOK, **kw).pack_stream(samples))
    first = Packer(TOK, **kw)
    head = [b for s in samples[:25] for b in first.add(s)]
    state = first.state_dict(include_samples=include_samples)
    assert state["buffer"]
    second = Packer(TOK, **kw)
    second.load_state_dict(state, None if include_samples else {s.id: s for s in samples})
    tail = list(second.pack_stream(samples[25:]))
    assert len(head) + len(tail) == len(ref)
    for x, y in zip(head + tail, ref):
        assert x.stats == y.stats
        for name in ("text_ids", "position_ids", "ce_indexes", "latent_timesteps", "images"):
            assert torch.equal(getattr(x, name), getattr(y, name))
    with pytest.raises(ValueError, match="other settings"):
        Packer(TOK, **{**kw, "seed": 3}).load_state_dict(state, {s.id: s for s in samples})


def test_collate_and_arguments():
    (b,) = pack_stream([Sample([TextSegment("red")])], TOK, pixels_per_token=PPT, max_tokens=4)
    assert collate_packed(b) is b and collate_packed([b]) is b
    assert b.sample_lens == [1, 3] and b.images.shape == (0, 3, 0, 0) and b.latent_timesteps.numel() == 0
    (u,) = pack_stream([Sample([TextSegment("red")])], TOK, pixels_per_token=PPT, max_tokens=4,
                       pad_to_budget=False)
    assert u.seq_len == 1 and u.sample_lens == [1] and u.stats["efficiency"] == 0.25
    with pytest.raises(TypeError, match="one PackedBatch per step"):
        collate_packed([b, b])
    for bad in (dict(max_tokens=0), dict(max_tokens_per_sample=9, max_tokens=8), dict(p_drop_text=1.5),
                dict(overflow_buffer=-1), dict(timestep_shift=0.0)):
        with pytest.raises(ValueError):
            Packer(TOK, pixels_per_token=PPT, **bad)
