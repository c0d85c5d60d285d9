"""The judge agrees with ground truth on constructed positives and negatives, and its refine ops
repair what it criticises."""

from __future__ import annotations

import random

import numpy as np
import pytest

from procpaint.datasets.construct import corrupt, flawed_draft
from procpaint.world import (
    TAGS,
    Renderer,
    SymbolicJudge,
    apply_ops,
    compare_plan,
    compare_state,
    parse_critique,
    prompt_text,
    realize,
    sample_prompt,
)
from procpaint.world.language import describe
from procpaint.world.scene import Obj, Spec, State


@pytest.mark.parametrize("tag", TAGS)
def test_image_judge_on_positives_and_planted_errors(tag):
    rng, prng = np.random.default_rng(3), random.Random(3)
    judge, painter = SymbolicJudge(), Renderer(32)
    for i in range(15):
        state = realize(sample_prompt(rng, tag), rng)
        plan = f"<ins>draw a red circle</ins><des>{describe(state.spec())}</des>"
        c, text, refine = judge.judge_image(painter.paint(state, i), plan)
        assert c.ok and refine is None and parse_critique(text) == c
        got = flawed_draft(state, prng)
        if got is None:
            continue
        draft, crit, ops, kind = got
        c2, text2, refine2 = judge.judge_image(painter.paint(draft, i), plan)
        assert not c2.ok and {e.kind for e in c2.errors} == {kind} and refine2
        fixed = apply_ops(draft, ops, random.Random(i))
        assert compare_state(state.spec(), fixed)[0].ok


def test_plan_judge_consistent_incomplete_and_contradiction():
    prompt = Spec((Obj("circle", "red"), Obj("square", "blue")), ((0, "left of", 1),))
    part = Spec((Obj("circle", "red", "small"),))
    c, _ = compare_plan(part, prompt)
    assert c.ok and c.objects == (Obj("square", "blue"),)
    full = Spec((Obj("circle", "red", "small"), Obj("square", "blue", "large")), ((0, "left of", 1),))
    c, _ = compare_plan(full, prompt)
    assert c.ok and not c.objects and not c.relations
    unplaced = Spec(full.objects)
    c, _ = compare_plan(unplaced, prompt)
    assert c.ok and c.relations
    wrong = Spec((Obj("circle", "green", "small"),))
    c, ops = compare_plan(wrong, prompt)
    assert not c.ok and c.errors[0].kind == "color" and ops
    flipped = Spec(full.objects, ((0, "right of", 1),))
    c, ops = compare_plan(flipped, prompt)
    assert not c.ok and c.errors[0].kind == "relation"
    plan = "<ins>swap the red circle and the blue square</ins><des>" + describe(flipped) + "</des>"
    text_c, crit, refine = SymbolicJudge().judge_plan(prompt_text(prompt), plan)
    assert not text_c.ok and refine.startswith("<refine>")


def test_corrupt_kinds_change_the_state():
    rng = random.Random(0)
    state = realize(Spec((Obj("star", "red"), Obj("star", "red"), Obj("cross", "blue")), ((0, "above", 2),)),
                    np.random.default_rng(0))
    for kind in ("color", "shape", "size", "missing", "extra", "count", "relation"):
        bad = corrupt(state, kind, rng)
        assert bad is not None and bad != state
    assert corrupt(State(), "color", rng) is None
