"""The knowledge facts: a seeded, deterministic, disjoint split; a corpus that states every fact; and a
pattern that finds a fact asked in a prompt (what the data tests scan training prompts with)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from procpaint.world import facts as F
from procpaint.world.language import NUMBERS


def test_split_is_deterministic_disjoint_and_complete():
    a, b = F.split_facts(), F.split_facts(F.HELDOUT_SHARE, 0)
    assert a == b
    held, trained = {f.id for f in a["heldout"]}, {f.id for f in a["trained"]}
    assert not held & trained
    assert held | trained == {f.id for f in F.FACTS} and len(F.FACTS) == len({f.id for f in F.FACTS})
    assert (len(held), len(trained)) == (56, 49)
    other = F.split_facts(F.HELDOUT_SHARE, 1)                  # the seed moves facts across
    assert {f.id for f in other["heldout"]} != held
    assert F.split_facts(0.0)["heldout"] == () and F.split_facts(1.0)["trained"] == ()
    with pytest.raises(ValueError):
        F.split_facts(1.5)


def test_every_category_and_stratum_is_on_both_sides():
    split = F.split_facts()
    for c in F.CATEGORIES:
        assert any(f.category == c for f in split["heldout"]), c
        assert any(f.category == c for f in split["trained"]), c
    sizes = Counter((f.category, f.form) for f in F.FACTS)
    for (c, form), n in sizes.items():
        held = sum(f.category == c and f.form == form for f in split["heldout"])
        assert held >= 1 and (n == 1 or held <= n - 1), (c, form, held, n)


def test_corpus_states_every_fact_of_both_splits_with_its_answer():
    corpus = F.fact_corpus()
    said = Counter(f.id for f, _ in corpus)
    for split in F.SPLITS:
        for f in F.split_facts()[split]:
            assert said[f.id] >= 3, f.id                              # several phrasings
            texts = [s for g, s in corpus if g == f]
            assert len(set(texts)) == len(texts)
            answer = NUMBERS[f.answer] if f.form == "count" else f.answer
            for s in texts:
                assert f" {answer} " in f" {s[:-1]} ", (f.id, s)
            if f.form != "space":
                assert any(f.phrase in s for s in texts), f.id
            else:
                assert any(F.asked_pattern(f).search(s) for s in texts), f.id


def test_asked_pattern_finds_exactly_the_fact_a_prompt_asks():
    rng = np.random.default_rng(0)
    for f in F.FACTS:
        for _ in range(3):
            text, spec = F.prompt_for(f, rng)
            assert [g.id for g in F.FACTS if F.asked_pattern(g).search(f"a photo of {text}")] == [f.id], text
    assert not F.asked_pattern(F.FACTS[0]).search("a photo of a red circle")


def test_vocabulary_covers_the_corpus():
    from procpaint.sequence.tokenizer import TextTokenizer, build_word_level

    tok = TextTokenizer(build_word_level(F.vocabulary()))
    for _, s in F.fact_corpus():
        tok.encode(s)                                                 # raises on an unknown word
