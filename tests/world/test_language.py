"""Round trips text -> structure -> text over the whole grammar (hypothesis) and vocabulary coverage."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from procpaint.sequence.tokenizer import TextTokenizer, build_word_level
from procpaint.world import (
    TAGS,
    Add,
    Critique,
    Error,
    Obj,
    Remove,
    Replace,
    SetAttr,
    Spec,
    Swap,
    critique_text,
    ops_text,
    parse_critique,
    parse_ops,
    parse_plan,
    parse_prompt,
    parse_refine,
    plan_text,
    prompt_text,
    refine_text,
    sample_prompt,
    vocabulary,
)
from procpaint.world.scene import COLORS, RELATIONS, SHAPES, SIZES

TOK = TextTokenizer(build_word_level(vocabulary()))
opt = lambda xs: st.one_of(st.none(), st.sampled_from(xs))
partial = st.builds(Obj, st.sampled_from(SHAPES), opt(COLORS), opt(SIZES))
full = st.builds(Obj, st.sampled_from(SHAPES), st.sampled_from(COLORS), st.sampled_from(SIZES))
seeds = st.integers(0, 2**32)


def _covered(text: str) -> None:
    TOK.encode(text)                                     # raises UnknownWordsError otherwise


@given(st.integers(0, 10**6), st.sampled_from(TAGS), seeds)
def test_prompt_round_trip(seed, tag, phr):
    spec = sample_prompt(np.random.default_rng(seed), tag)
    text = prompt_text(spec, random.Random(phr))
    assert parse_prompt(text) == spec
    _covered(text)


@given(st.lists(full, min_size=1, max_size=5), seeds, st.data())
def test_plan_round_trip(objs, phr, data):
    objs = tuple(objs)
    uniq = [i for i, o in enumerate(objs) if objs.count(o) == 1]
    rels = ()
    if len(uniq) >= 2 and data.draw(st.booleans()):
        a, b = data.draw(st.permutations(uniq))[:2]
        rels = ((a, data.draw(st.sampled_from(RELATIONS)), b),)
    spec = Spec(objs, rels)
    ops = data.draw(st.lists(st.one_of(
        st.builds(lambda o, n: Add((o,) * n), full, st.integers(1, 4)),
        st.builds(lambda o, r, a: Add((o,), (r, a)), full, st.sampled_from(RELATIONS), partial),
        st.builds(SetAttr, partial, st.sampled_from(COLORS + SIZES)),
        st.builds(Replace, partial, full), st.builds(Remove, partial), st.builds(Swap, partial, partial),
    ), min_size=1, max_size=3))
    text = plan_text(tuple(ops), spec, random.Random(phr))
    assert parse_plan(text) == (tuple(ops), spec)
    assert parse_ops(ops_text(ops, random.Random(phr))) == tuple(ops)
    assert parse_refine(refine_text(ops, random.Random(phr))) == tuple(ops)
    _covered(text)


errors = st.one_of(
    st.builds(lambda o, v: Error("color", o, v), partial, st.sampled_from(COLORS)),
    st.builds(lambda o, v: Error("size", o, v), partial, st.sampled_from(SIZES)),
    st.builds(lambda o, v: Error("shape", o, v), partial, st.sampled_from(SHAPES)),
    st.builds(lambda o: Error("missing", o), partial),
    st.builds(lambda o: Error("extra", o), partial),
    st.builds(lambda o, n, m: Error("count", o, n=n, m=m), partial, st.integers(1, 6), st.integers(0, 6)),
    st.builds(lambda a, r, b: Error("relation", a, r, b), partial, st.sampled_from(RELATIONS), partial),
)


@given(st.sampled_from(["image", "plan"]), st.booleans(), st.lists(errors, min_size=1, max_size=3),
       st.lists(full, min_size=0, max_size=4), seeds, st.data())
def test_critique_round_trip(subject, ok, errs, objs, phr, data):
    if ok:
        rels = ()
        if subject == "plan" and data.draw(st.booleans()):
            rels = ((data.draw(partial), data.draw(st.sampled_from(RELATIONS)), data.draw(partial)),)
        if subject == "image" and not objs:
            objs = [Obj("circle", "red", "small")]
        c = Critique(subject, True, (), tuple(objs), rels)
    else:
        c = Critique(subject, False, tuple(errs))
    text = critique_text(c, random.Random(phr))
    assert parse_critique(text) == c
    _covered(text)


def test_vocabulary_is_sorted_and_unique():
    v = vocabulary()
    assert v == sorted(set(v)) and "circle" in v and "<ins>" not in v
