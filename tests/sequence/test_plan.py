"""Sequence plans and sample layouts: the layout rules of docs/ARCHITECTURE.md as invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from procpaint.sequence.plan import CAUSAL, FULL, NOISE, SequencePlanner
from procpaint.sequence.tokenizer import TextTokenizer, build_word_level
from procpaint.sequence.types import ImageSegment, Sample, TextSegment

WORDS = "draw a red blue circle square the is too small left of right big".split()
TOK = TextTokenizer(build_word_level(WORDS))
PPT = 2


@st.composite
def samples(draw, max_segments: int = 8) -> Sample:
    segs = []
    for _ in range(draw(st.integers(1, max_segments))):
        if draw(st.booleans()):
            words = draw(st.lists(st.sampled_from(WORDS + ["<ins>", "</ins>", "<refine>"]), max_size=6))
            role = draw(st.sampled_from(["prompt", "plan", "critique", "refine", "instruction"]))
            segs.append(TextSegment(" ".join(words), loss=draw(st.booleans()), role=role))
        else:
            h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
            segs.append(ImageSegment(torch.rand(3, h * PPT, w * PPT), loss=draw(st.booleans())))
    return Sample(segs, eos=draw(st.booleans()), id=f"s{draw(st.integers(0, 99))}")


def clean_successor(modes: list[str], lens: list[int]) -> dict[int, int]:
    """Map each clean-stream offset to the next clean-stream offset (noise splits skipped)."""
    starts = np.cumsum([0, *lens[:-1]])
    clean = [o for m, s, n in zip(modes, starts, lens) if m != NOISE for o in range(s, s + n)]
    return dict(zip(clean[:-1], clean[1:]))


def expected_targets(sample: Sample, planner: SequencePlanner) -> int:
    """Count of CE targets by the rule in types.py (the sample's first token has no predictor)."""
    count, first = 0, True
    for seg in sample.segments:
        if isinstance(seg, TextSegment):
            n = len(TOK.encode(seg.text))
            if n:
                count += (n - first) if seg.loss else 0
                first = False
        else:
            count += int(seg.loss and not first)
            first = False
    return count + int(sample.eos and not first)


@given(samples())
def test_layout_invariants(sample):
    planner = SequencePlanner(TOK, PPT)
    plan = planner.plan(sample)
    lay = plan.layout()
    n = plan.num_tokens
    assert n == sum(lay.split_lens) == len(lay.position_ids) == planner.num_tokens(sample)
    # Routing: text (incl. vision markers) and latents partition the sample.
    both = np.concatenate([lay.text_offsets, lay.latent_offsets])
    assert np.array_equal(np.sort(both), np.arange(n))
    assert len(lay.text_ids) == len(lay.text_offsets)
    tok_at = dict(zip(lay.text_offsets.tolist(), lay.text_ids.tolist()))
    # Position ids: causal +1 per token, an image split shares one id, noise does not advance.
    starts = np.cumsum([0, *lay.split_lens[:-1]])
    pos = 0
    for k, (m, s, ln) in enumerate(zip(lay.attn_modes, starts, lay.split_lens)):
        p = lay.position_ids[s:s + ln]
        if m == CAUSAL:
            assert np.array_equal(p, np.arange(pos, pos + ln))
            pos += ln
        else:
            assert (p == pos).all()
            assert tok_at[s] == TOK.vision_start_id and tok_at[s + ln - 1] == TOK.vision_end_id
            if m == NOISE:  # always followed by its clean copy: same id, same image, same length
                assert lay.attn_modes[k + 1] == FULL and lay.split_lens[k + 1] == ln
                assert lay.position_ids[s + ln] == pos
            else:
                pos += 1
    # Labels: each target is the token at the next clean-stream offset, or EOS at the end.
    succ = clean_successor(lay.attn_modes, lay.split_lens)
    for i, lab in zip(lay.ce_offsets.tolist(), lay.ce_labels.tolist()):
        assert lay.attn_modes[np.searchsorted(starts, i, side="right") - 1] != NOISE
        if i in succ:
            assert tok_at[succ[i]] == lab
        else:
            assert sample.eos and lab == TOK.eos_id and i == n - 1
    assert len(set(lay.ce_offsets.tolist())) == len(lay.ce_offsets)
    assert len(lay.ce_offsets) == expected_targets(sample, planner)
    # MSE tokens: exactly the latents of noise splits, one ordinal per generated image.
    noise_off = {o for m, s, ln in zip(lay.attn_modes, starts, lay.split_lens) if m == NOISE
                 for o in range(s + 1, s + ln - 1)}
    assert {o for o, ns in zip(lay.latent_offsets.tolist(), lay.latent_noise_split.tolist()) if ns >= 0} \
        == noise_off
    assert lay.num_noise_splits == sum(isinstance(s, ImageSegment) and s.loss for s in sample.segments)


def test_trajectory_by_hand():
    """PROMPT PLAN IMG INSPECT REFINE IMG EOS, written out: positions and every label."""
    img1, img2 = torch.rand(3, 4, 4), torch.rand(3, 4, 4)  # 2x2 latent tokens -> splits of 6
    sample = Sample([
        TextSegment("draw a red circle", role="prompt"),                 # 4 tokens, no loss
        TextSegment("<ins>draw a circle</ins>", loss=True, role="plan"),  # 5
        ImageSegment(img1, loss=True),                                   # noise 6 + full 6
        TextSegment("the circle is too small", loss=True, role="critique"),  # 5
        TextSegment("<refine>big circle</refine>", loss=True, role="refine"),  # 4
        ImageSegment(img2, loss=True),
    ], eos=True, id="traj")
    plan = SequencePlanner(TOK, PPT).plan(sample)
    lay = plan.layout()
    assert lay.attn_modes == [CAUSAL, CAUSAL, NOISE, FULL, CAUSAL, CAUSAL, NOISE, FULL]
    assert lay.split_lens == [4, 5, 6, 6, 5, 4, 6, 6]
    assert lay.position_ids.tolist() == [*range(9), *[9] * 12, *range(10, 19), *[19] * 12]
    vs, ve = TOK.vision_start_id, TOK.vision_end_id
    ids = lambda text: TOK.encode(text)  # noqa: E731
    expected = (
        [(3 + j, t) for j, t in enumerate(ids("<ins>draw a circle</ins>"))]      # prompt's last token on
        + [(8, vs)]                                                              # plan -> <|vision_start|>
        + [(20 + j, t) for j, t in enumerate(ids("the circle is too small"))]   # clean <|vision_end|> on
        + [(25 + j, t) for j, t in enumerate(ids("<refine>big circle</refine>"))]
        + [(29, vs)] + [(41, TOK.eos_id)]                                       # refine -> switch; EOS
    )
    assert list(zip(lay.ce_offsets.tolist(), lay.ce_labels.tolist())) == expected
    assert lay.text_ids[lay.text_offsets.tolist().index(20)] == ve
    assert len(plan.images) == 2 and plan.items[2].image == plan.items[3].image == 0


def test_context_image_and_alignment_sample():
    """instruction + image as context, critique target: one clean copy, no MSE, no switch label."""
    sample = Sample([TextSegment("draw a square", role="instruction"), ImageSegment(torch.rand(3, 2, 6)),
                     TextSegment("the square is too small", loss=True, role="critique")], kind="alignment")
    lay = SequencePlanner(TOK, PPT).plan(sample).layout()
    assert lay.attn_modes == [CAUSAL, FULL, CAUSAL] and lay.num_noise_splits == 0
    assert (lay.latent_noise_split == -1).all()
    assert lay.latent_rows.tolist() == [0, 0, 0] and lay.latent_cols.tolist() == [0, 1, 2]
    assert lay.ce_offsets.tolist() == [7, 8, 9, 10, 11]  # clean <|vision_end|> predicts "the"
    assert TOK.vision_start_id not in lay.ce_labels.tolist()


def test_unknown_segment_type_is_an_error():
    with pytest.raises(ValueError, match="sample u segment 0 .*unknown segment type str"):
        SequencePlanner(TOK, PPT).plan(Sample(["red"], id="u"))  # type: ignore[list-item]


def test_cfg_dropout_rules():
    """Dropped text: the prompt and plan before the first generated image, removed, no position
    consumed (what the generator's text-unconditional branch feeds a first image: nothing). Dropped
    context image: removed, +1 position."""
    ctx, gen = torch.rand(3, 2, 2), torch.rand(3, 2, 2)
    sample = Sample([TextSegment("draw a circle", role="prompt"), ImageSegment(ctx),
                     TextSegment("red", loss=True, role="plan"), ImageSegment(gen, loss=True),
                     TextSegment("red", loss=True, role="critique")], eos=True)
    planner = SequencePlanner(TOK, PPT)
    full = planner.plan(sample).layout()
    assert full.position_ids.tolist() == [0, 1, 2, 3, 3, 3, 4, 5, 5, 5, 5, 5, 5, 6]
    no_text = planner.plan(sample, drop_text=True)
    assert [it.role for it in no_text.items] == ["image", "image", "image", "critique"]
    assert no_text.layout().position_ids.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 2]
    assert no_text.num_tokens == planner.num_tokens(sample, drop_text=True) == 10
    # The old rule (prompt only) stays available.
    prompt_only = SequencePlanner(TOK, PPT, cfg_text_roles=("prompt",)).plan(sample, drop_text=True)
    assert [it.role for it in prompt_only.items] == ["image", "plan", "image", "image", "critique"]
    no_img = planner.plan(sample, drop_image=True)
    assert no_img.layout().position_ids.tolist() == [0, 1, 2, 4, 5, 5, 5, 5, 5, 5, 6]
    assert len(no_img.images) == 1 and no_img.images[0] is gen
    assert no_img.num_tokens == planner.num_tokens(sample, drop_image=True) == 11
    # Generated images are never dropped as "context"; a dropped-out prompt costs its first label.
    both = planner.plan(sample, drop_text=True, drop_image=True).layout()
    assert both.attn_modes == [NOISE, FULL, CAUSAL] and both.ce_labels.tolist()[-1] == TOK.eos_id


def test_cfg_text_dropout_without_a_generated_image_keeps_the_plan():
    # A conflict sample: its critique is about the plan, so only the prompt goes.
    sample = Sample([TextSegment("draw a circle", role="prompt"), TextSegment("red", role="plan"),
                     TextSegment("red", loss=True, role="critique")])
    planner = SequencePlanner(TOK, PPT)
    assert planner.has_droppable(sample) == (True, False)
    assert [it.role for it in planner.plan(sample, drop_text=True).items] == ["plan", "critique"]


def test_same_image_twice_is_stacked_once():
    img = torch.rand(3, 2, 2)
    sample = Sample([ImageSegment(img), TextSegment("red", loss=True), ImageSegment(img)])
    plan = SequencePlanner(TOK, PPT).plan(sample)
    assert len(plan.images) == 1 and [it.image for it in plan.items if it.mode != CAUSAL] == [0, 0]


def test_empty_text_is_left_out():
    sample = Sample([TextSegment("", role="prompt"), TextSegment("red", loss=True)])
    plan = SequencePlanner(TOK, PPT).plan(sample)
    assert [it.num_tokens for it in plan.items] == [1] and plan.layout().ce_offsets.size == 0


@pytest.mark.parametrize("image, msg", [
    (torch.rand(3, 3, 4), "not a positive multiple of pixels_per_token=2"),
    (torch.rand(4, 4), r"must be a \(3, H, W\) tensor"),
    (torch.rand(3, 0, 4), "not a positive multiple"),
])
def test_bad_images_name_the_sample(image, msg):
    sample = Sample([TextSegment("red"), ImageSegment(image, loss=True)], id="bad-7",
                    meta={"source": "shard-0.jsonl:12"})
    with pytest.raises(ValueError, match=msg) as err:
        SequencePlanner(TOK, PPT).plan(sample)
    assert "sample bad-7 (shard-0.jsonl:12) segment 1 (image)" in str(err.value)


def test_limits_and_unknown_words():
    big = Sample([ImageSegment(torch.rand(3, 20, 4))], id="big")
    with pytest.raises(ValueError, match="max_latent_size=8"):
        SequencePlanner(TOK, PPT, max_latent_size=8).num_tokens(big)
    with pytest.raises(ValueError, match="sample w segment 0 .*unknown word"):
        SequencePlanner(TOK, PPT).plan(Sample([TextSegment("draw a zebra")], id="w"))
    with pytest.raises(ValueError, match="pixels_per_token"):
        SequencePlanner(TOK, 0)
