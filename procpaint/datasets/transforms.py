"""Sample transforms behind the ablation rows (train/configs/*.yaml, ``data.trajectory`` and
``data.self_critique``). Applied while streaming, so one built dataset serves several rows.

- :func:`final_only` — the single-pass baseline: prompt -> the trajectory's final image, noised copy
  only (BAGEL's text-to-image layout: a clean copy would spend ~half the sample's tokens on nothing
  but an EOS label, and single-pass inference ends with its image anyway). Fact-corpus records (text
  only) pass unchanged: both rows of the knowledge comparison read the same facts.
- :func:`without_self_critique` — plan + sketch rounds with no INSPECT critique and no refine: a
  refined round keeps its corrected image in place of the flawed draft.
"""

from __future__ import annotations

from dataclasses import replace

from procpaint.sequence.types import ImageSegment, Sample, TextSegment


def final_only(sample: Sample) -> Sample | None:
    """Prompt + last generated image (loss, no clean copy); a fact-corpus sample unchanged; None for
    other samples without a generated image."""
    if sample.kind == "fact":
        return sample
    prompt = [s for s in sample.segments if isinstance(s, TextSegment) and s.role == "prompt"]
    images = [s for s in sample.segments if isinstance(s, ImageSegment) and s.loss]
    if not prompt or not images:
        return None
    final = replace(images[-1], clean_copy=False)
    return replace(sample, segments=[*prompt, final], eos=False, kind="single_pass")


def without_self_critique(sample: Sample) -> Sample | None:
    """Drop critiques; drop each refine with the flawed draft it corrects. None if nothing is left
    to learn (a sample whose only targets were critiques)."""
    out: list = []
    for seg in sample.segments:
        if isinstance(seg, TextSegment) and seg.role == "critique":
            continue
        if isinstance(seg, TextSegment) and seg.role == "refine":
            while out and isinstance(out[-1], ImageSegment):  # the draft this refine corrects
                out.pop()
            continue
        out.append(seg)
    if not any(s.loss for s in out):
        return None
    return replace(sample, segments=out)


def sample_transform(trajectory: str = "process", self_critique: bool = True):
    """The transform for a data config, or None when samples pass through unchanged."""
    steps = []
    if not self_critique:
        steps.append(without_self_critique)
    if trajectory == "final_only":
        steps.append(final_only)
    elif trajectory != "process":
        raise ValueError(f"trajectory must be 'process' or 'final_only', got {trajectory!r}")
    if not steps:
        return None

    def apply(sample: Sample) -> Sample | None:
        for step in steps:
            sample = step(sample)
            if sample is None:
                return None
        return sample

    return apply
