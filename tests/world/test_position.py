"""One definition of relations: the world's ``relation_holds`` is GenEval's relative-position rule,
so oracle layouts pass the GenEval scorer and the judge agrees with it on planted position errors."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from procpaint.datasets.construct import flawed_draft
from procpaint.evaluation import geneval
from procpaint.world import Detector, Renderer, SymbolicJudge, compare_state, realize, sample_prompt
from procpaint.world.language import describe
from procpaint.world.scene import (
    GRID,
    RELATIONS,
    SHAPES,
    SIZES,
    Obj,
    Placed,
    Spec,
    State,
    relation_holds,
    relations_between,
)

DET = Detector()
CELLS = [(r, c) for r in range(GRID) for c in range(GRID)]


def _expected_on_grid(a: Placed, b: Placed) -> set[str]:
    """The rule spelled out on cells: dominant axis wins, a 45-degree diagonal has both."""
    dr, dc = a.row - b.row, a.col - b.col
    out = set()
    if dc and abs(dc) >= abs(dr):
        out.add("left of" if dc < 0 else "right of")
    if dr and abs(dr) >= abs(dc):
        out.add("above" if dr < 0 else "below")
    return out


def test_cell_rule_is_geneval_rule_on_nominal_boxes():
    for (ca, cb), za, zb in itertools.product(itertools.permutations(CELLS, 2), SIZES, SIZES):
        a, b = Placed("circle", "red", za, *ca), Placed("square", "blue", zb, *cb)
        assert set(relations_between(a, b)) == _expected_on_grid(a, b), (a, b)
        for rel in RELATIONS:
            assert relation_holds(a, rel, b) == (rel in _expected_on_grid(a, b))
    # steep diagonal (one column, two rows apart): only the vertical relation
    a, b = Placed("circle", "red", "large", 0, 0), Placed("square", "blue", "large", 2, 1)
    assert not relation_holds(a, "left of", b) and relation_holds(a, "above", b)


def test_geneval_module_uses_the_world_definition():
    from procpaint.world import scene
    assert geneval.relative_position is scene.relative_position
    assert not hasattr(geneval, "realize_geneval")


def _position_specs(n: int, seed: int) -> list[Spec]:
    """Position prompts of both generators: the world's training sampler and GenEval's metadata."""
    rng = np.random.default_rng(seed)
    specs = [sample_prompt(rng, "position") for _ in range(n // 2)]
    meta = geneval.generate_metadata({"position": n - len(specs)}, seed=seed)
    return specs + [geneval.spec_from_json(m["spec"]) for m in meta]


def test_oracle_layouts_of_position_prompts_score_one():
    painter, fails = Renderer(32), []
    specs = _position_specs(240, seed=11)
    for i, spec in enumerate(specs):
        state = realize(spec, np.random.default_rng([11, i]))
        meta = geneval.entry("position", spec)
        ok, why = geneval.evaluate(geneval.detect(painter.paint(state, i), DET), meta)
        if not ok:
            fails.append((meta["prompt"], [(p.row, p.col) for p in state.objects], why))
    assert not fails, fails[:5]


def test_oracle_layouts_with_more_objects_keep_the_relation():
    """Composite scenes (3-4 objects): the stated relation holds on the detected boxes."""
    painter, rng = Renderer(32), np.random.default_rng(5)
    for i in range(60):
        spec = sample_prompt(rng, "composite")
        state = realize(spec, rng)
        (a, rel, b), = spec.relations
        boxes = {(d.row, d.col): geneval.to_box(d) for d in DET.detect(painter.paint(state, i))}
        pa, pb = state.objects[a], state.objects[b]
        assert rel in geneval.relative_position(boxes[pa.row, pa.col].box, boxes[pb.row, pb.col].box)


@pytest.mark.parametrize("size", [32, 48])
def test_judge_agrees_with_geneval_on_every_layout(size):
    """Any two cells (right, reversed, same row/column, steep or 45-degree diagonal): the judge's
    relation verdict on the rendered image equals GenEval's position verdict."""
    painter, judge = Renderer(size), SymbolicJudge(DET)
    rng = np.random.default_rng(size)
    pairs = list(itertools.permutations(CELLS, 2))
    for k in range(220):
        ca, cb = pairs[k % len(pairs)]
        sa, sb = (SHAPES[i] for i in rng.permutation(len(SHAPES))[:2])
        za, zb = (SIZES[i] for i in rng.integers(0, 2, 2))
        rel = RELATIONS[int(rng.integers(len(RELATIONS)))]
        a, b = Obj(sa, "red", za), Obj(sb, "blue", zb)
        spec = Spec((a, b), ((0, rel, 1),))
        img = painter.paint(State((Placed(sa, "red", za, *ca, uid=0), Placed(sb, "blue", zb, *cb, uid=1))), k)
        ok_geneval, why = geneval.evaluate(geneval.detect(img, DET), geneval.entry("position", spec))
        crit, _ = compare_state(spec, DET.state(img))
        assert {e.kind for e in crit.errors} <= {"relation"}, crit
        assert crit.ok == ok_geneval, (ca, cb, rel, why, crit)
        c, _, refine = judge.judge_image(img, f"<ins>draw a red circle</ins><des>{describe(spec)}</des>")
        assert c.ok == ok_geneval and (refine is None) == ok_geneval


def test_planted_relation_errors_fail_geneval():
    painter, prng, rng = Renderer(32), random.Random(2), np.random.default_rng(2)
    seen = 0
    for i in range(200):
        spec = sample_prompt(rng, "position")
        state = realize(spec, rng)
        got = flawed_draft(state, prng, kinds=("relation",))
        draft, crit, ops, kind = got
        assert kind == "relation" and [e.kind for e in crit.errors] == ["relation"]
        meta = geneval.entry("position", spec)
        assert not geneval.evaluate(geneval.detect(painter.paint(draft, i), DET), meta)[0]
        fixed = painter.paint(State(apply_fix(draft, ops).objects), i)
        assert geneval.evaluate(geneval.detect(fixed, DET), meta)[0]
        seen += 1
    assert seen == 200


def apply_fix(state: State, ops) -> State:
    from procpaint.world import apply_ops
    return apply_ops(state, ops, random.Random(0))


def test_canonical_layout_is_one_layout_per_prompt_and_obeys_relations():
    import numpy as np

    from procpaint.world import parse_prompt
    from procpaint.world.scene import CANONICAL_CELLS, realize, relation_holds

    for text in ("a photo of a red circle", "a photo of a blue square left of a green star",
                 "a photo of a yellow cross below a purple triangle", "a photo of three black diamonds"):
        spec = parse_prompt(text)
        states = [realize(spec, np.random.default_rng(s), layout="canonical") for s in range(5)]
        cells = {tuple((p.row, p.col) for p in st.objects) for st in states}
        assert len(cells) == 1, (text, cells)                       # the same place every time
        st = states[0]
        assert all(relation_holds(st.objects[a], r, st.objects[b]) for a, r, b in spec.relations)
        if not spec.relations:                                      # the most central cells first
            assert [(p.row, p.col) for p in st.objects] == list(CANONICAL_CELLS[:len(spec.objects)])
    with pytest.raises(ValueError, match="layout"):
        realize(parse_prompt("a photo of a red circle"), np.random.default_rng(0), layout="grid")
