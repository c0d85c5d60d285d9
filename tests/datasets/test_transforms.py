"""Ablation transforms: single-pass samples and trajectories without self-critique."""

import torch

from procpaint.datasets.transforms import final_only, sample_transform, without_self_critique
from procpaint.sequence.types import ImageSegment, Sample, TextSegment


def _img(v):
    return torch.full((3, 4, 4), float(v))


def _trajectory():
    return Sample(segments=[
        TextSegment("a photo of a red circle", role="prompt"),
        TextSegment("<ins>draw</ins><des>x</des>", loss=True, role="plan"),
        ImageSegment(_img(0.1), loss=True),
        TextSegment("the circle is blue", loss=True, role="critique"),
        TextSegment("<refine>make it red</refine>", loss=True, role="refine"),
        ImageSegment(_img(0.2), loss=True),
        TextSegment("<ins>more</ins><des>y</des>", loss=True, role="plan"),
        ImageSegment(_img(0.3), loss=True),
        TextSegment("looks right", loss=True, role="critique"),
    ], eos=True, id="t0")


def test_final_only_keeps_prompt_and_last_image():
    s = final_only(_trajectory())
    assert [type(x).__name__ for x in s.segments] == ["TextSegment", "ImageSegment"]
    assert s.segments[0].role == "prompt" and s.segments[1].loss
    assert torch.equal(s.segments[1].image, _img(0.3)) and s.kind == "single_pass"
    # BAGEL's text-to-image layout: the final image's noised copy only, nothing predicts EOS.
    assert not s.segments[1].clean_copy and not s.eos


def test_final_only_pack_spends_no_tokens_on_a_clean_copy():
    from procpaint.sequence.plan import SequencePlanner
    from procpaint.sequence.tokenizer import TextTokenizer, build_word_level

    tok = TextTokenizer(build_word_level("a photo of red circle".split()))
    planner = SequencePlanner(tok, pixels_per_token=2)
    sample = final_only(_trajectory())
    plan = planner.plan(sample)
    assert [it.mode for it in plan.items] == ["causal", "noise"]
    assert plan.num_tokens == planner.num_tokens(sample) == 6 + 2 * 2 + 2    # 6 prompt words, a 2x2 grid, markers
    layout = plan.layout()
    assert tok.eos_id not in layout.ce_labels.tolist()          # no EOS target without a clean copy
    assert layout.ce_labels.tolist() == [tok.vision_start_id]  # the modality switch stays supervised


def test_without_self_critique_replaces_flawed_draft_by_correction():
    s = without_self_critique(_trajectory())
    roles = [x.role for x in s.segments]
    assert "critique" not in roles and "refine" not in roles
    images = [x.image for x in s.segments if isinstance(x, ImageSegment)]
    assert [round(float(i[0, 0, 0]), 3) for i in images] == [0.2, 0.3]   # flawed draft 0.1 gone
    assert roles == ["prompt", "plan", "image", "plan", "image"]


def test_critique_only_samples_are_dropped():
    alignment = Sample(segments=[TextSegment("<ins>draw</ins>", role="plan"), ImageSegment(_img(0)),
                                 TextSegment("it is right", loss=True, role="critique")])
    assert without_self_critique(alignment) is None
    assert sample_transform("final_only", True)(alignment) is None
    assert sample_transform("process", True) is None
