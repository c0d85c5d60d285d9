"""Knowledge (WISE-analogue) benchmark: metadata resolves to scene graphs, exact scoring."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from procpaint.evaluation import geneval, knowledge
from procpaint.evaluation.geneval import spec_from_json
from procpaint.world import Detector, Renderer, State, facts, realize
from procpaint.world.scene import Placed

DET = Detector()


def test_shares_and_categories_follow_wise():
    meta = knowledge.generate_metadata(1000)
    assert Counter(m["category"] for m in meta) == Counter(knowledge.WISE_SHARES)
    assert knowledge.generate_metadata(50, seed=1) == knowledge.generate_metadata(50, seed=1)
    forms = Counter(m["form"] for m in meta)
    assert set(forms) == {"color", "shape", "count", "space"}


def test_prompts_hide_the_resolved_attribute():
    meta = knowledge.generate_metadata(300)
    for m in meta:
        spec = spec_from_json(m["spec"])
        words = set(m["prompt"].replace(".", " ").split())
        if m["form"] == "color":
            assert spec.objects[0].color not in words            # named only through the fact
        if m["form"] == "shape":
            assert spec.objects[0].shape not in words
        if m["form"] == "count":
            assert not words & {"two", "three", "four"}
            assert 2 <= len(spec.objects) <= 4
        if m["form"] == "space":
            assert not words & {"left", "right", "above", "below"} and len(spec.relations) == 1


@pytest.mark.parametrize("prompt_fact,table,expected", [
    ("a ripe banana", knowledge.COLOR_FACTS["cultural"], "yellow"),
    ("leaves in autumn", knowledge.COLOR_FACTS["time"], "orange"),
    ("the daytime sky", knowledge.COLOR_FACTS["physics"], "blue"),
    ("like a square turned by forty five degrees", knowledge.SHAPE_FACTS["physics"], "diamond"),
    ("there are seasons in a year", knowledge.COUNT_FACTS["time"], 4),
    ("the {a} is east of the {b}, as on a map", knowledge.SPACE_FACTS, "right of"),
])
def test_facts(prompt_fact, table, expected):
    assert table[prompt_fact] == expected


def test_oracle_renders_score_one_per_category(oracle):
    meta = knowledge.generate_metadata(120, seed=2)
    rows = [{"tag": m["tag"], "correct": knowledge.score_image(oracle(m, 50 + i), m, DET)[0]}
            for i, m in enumerate(meta)]
    s = knowledge.summarize(rows)
    assert set(knowledge.CATEGORIES) <= set(s)
    assert all(s[c] >= 0.95 for c in knowledge.CATEGORIES), s
    assert s["overall"] >= 0.98


def test_exact_scoring_catches_wrong_answers():
    m = {"tag": "cultural", "category": "cultural",
         "prompt": "a photo of a circle the color of a ripe banana",
         "spec": {"objects": [{"shape": "circle", "color": "yellow"}], "relations": []}}
    def paint(*objs):
        return Renderer(32).paint(State(tuple(Placed(*o, uid=k) for k, o in enumerate(objs))), 1)

    assert knowledge.score_image(paint(("circle", "yellow", "large", 1, 1)), m, DET) == (True, "")
    ok, why = knowledge.score_image(paint(("circle", "red", "large", 1, 1)), m, DET)
    assert not ok and "yellow" in why
    extra = paint(("circle", "yellow", "large", 1, 1), ("star", "red", "small", 0, 0))
    ok, _ = knowledge.score_image(extra, m, DET)
    assert not ok                                                      # exact: no extra objects
    rel = knowledge.make_prompt(np.random.default_rng(0), "space")
    spec = spec_from_json(rel["spec"])
    state = realize(spec, np.random.default_rng(0))
    a, b = state.objects
    swapped = State((Placed(a.shape, a.color, a.size, b.row, b.col),
                     Placed(b.shape, b.color, b.size, a.row, a.col)))
    assert knowledge.score_image(Renderer(32).paint(state, 0), rel, DET)[0]
    assert not knowledge.score_image(Renderer(32).paint(swapped, 0), rel, DET)[0]


def test_geneval_clauses_of_knowledge_lines_agree_with_exact_score(oracle):
    for i, m in enumerate(knowledge.generate_metadata(60, seed=5)):
        img = oracle(m, i)
        assert geneval.evaluate(geneval.detect(img, DET), m)[0] == knowledge.score_image(img, m, DET)[0], m


def test_summary_weights_by_prompt_share():
    rows = [{"tag": "cultural", "correct": True}, {"tag": "space", "correct": False}]
    s = knowledge.summarize(rows)
    assert s["overall"] == pytest.approx(400 / 533)


def test_vocabulary_covers_prompts():
    meta = knowledge.generate_metadata(500)
    assert set(knowledge.vocabulary(meta)) <= set(knowledge.vocabulary())


def test_default_benchmark_asks_only_heldout_facts_and_trained_is_labelled():
    held = {f.id for f in knowledge.split_facts()["heldout"]}
    meta = knowledge.generate_metadata(1000)
    assert {m["split"] for m in meta} == {"heldout"} and {m["fact"] for m in meta} <= held
    assert Counter(m["category"] for m in meta) == Counter(knowledge.WISE_SHARES)
    trained = knowledge.generate_metadata(300, split="trained")
    assert {m["split"] for m in trained} == {"trained"} and not {m["fact"] for m in trained} & held
    for m in meta[:200]:                          # the prompt asks exactly its fact
        fact = next(f for f in knowledge.FACTS if f.id == m["fact"])
        assert facts.asked_pattern(fact).search(m["prompt"])
    assert {m["fact"] for m in knowledge.generate_metadata(1000, split="all")} - held
    with pytest.raises(ValueError, match="unknown knowledge split"):
        knowledge.generate_metadata(10, split="test")
