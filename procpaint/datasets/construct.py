"""Construction of one sample of each subset from a seeded trajectory of the painting world.

A *trajectory* is the paper's ordered subgraph expansion of a prompt's scene graph: objects are
added over 1-5 rounds (attributes and relations settle along the way), a seeded share of rounds is
rewritten into edit operations (refine an attribute the prompt leaves open, swap two objects into
the prompt's relation) and a seeded share gets a flawed draft that INSPECT catches and REFINE
fixes. Every round is filtered by the judge (plan vs prompt, image vs plan); a disagreement
rejects the whole sample, which the caller retries under a new sub-seed.

The three subsets are views of trajectories (docs/ARCHITECTURE.md, "The packed sequence"):
multi-turn = the whole trajectory; conflict = context up to a (possibly perturbed) plan, target its
critique; alignment = plan + (possibly flawed) image, target its critique.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np

from ..world.critiques import Critique, critique_text
from ..world.edit import EditError, apply_ops
from ..world.facts import Fact, prompt_for, split_facts
from ..world.judge import compare_plan, compare_state
from ..world.language import OP_NAMES, PREFIXES, Add, SetAttr, Swap, plan_text, prompt_text, refine_text
from ..world.prompts import TAGS, is_heldout, sample_split_prompt
from ..world.scene import COLORS, INVERSE, SHAPES, SIZES, Obj, Placed, State, realize, relation_holds
from .config import BuildConfig

ERROR_KINDS = ("color", "shape", "size", "missing", "extra", "count", "relation")
# The GenEval tag whose scenes a knowledge prompt of each form resolves to: a knowledge prompt is
# built only when its tag is in the build's tag mix (a single-object probe gets none).
FORM_TAGS = {"color": "colors", "shape": "colors", "count": "counting", "space": "position"}
ALL_OBJECTS = tuple(Obj(s, c, z) for s in SHAPES for c in COLORS for z in SIZES)


class Reject(Exception):
    """The judge disagreed with the construction; the sample is rebuilt under another sub-seed."""


@dataclass
class Round:
    ops: tuple
    state: State                  # what the plan describes
    plan: str
    drawn: State                  # what the first image shows (a flawed draft or ``state``)
    critique: str
    refine: str | None = None
    error: str | None = None      # error kind of a flawed draft


@dataclass
class Trajectory:
    tag: str
    prompt: str
    spec: object
    rounds: list[Round]


def _rel_state(objs: list[Placed], rel, present_rel: bool) -> State:
    """State over ``objs`` stating the prompt relation (by uid) when both ends are present."""
    if rel is None or not present_rel:
        return State(tuple(objs))
    uids = [p.uid for p in objs]
    a, r, b = rel
    if a in uids and b in uids:
        return State(tuple(objs), ((uids.index(a), r, uids.index(b)),))
    return State(tuple(objs))


def corrupt(state: State, kind: str, rng: random.Random) -> State | None:
    """One realistic error of ``kind`` in a rendered state (None when it does not apply)."""
    objs = list(state.objects)
    if not objs and kind != "extra":
        return None
    i = rng.randrange(len(objs)) if objs else 0
    if kind == "color":
        objs[i] = replace(objs[i], color=rng.choice([c for c in COLORS if c != objs[i].color]))
    elif kind == "size":
        objs[i] = replace(objs[i], size="small" if objs[i].size == "large" else "large")
    elif kind == "shape":
        objs[i] = replace(objs[i], shape=rng.choice([s for s in SHAPES if s != objs[i].shape]))
    elif kind == "missing":
        del objs[i]
        return State(tuple(objs))
    elif kind in ("extra", "count"):
        free = state.free_cells()
        if not free:
            return None
        uid = max((p.uid for p in objs), default=-1) + 1
        if kind == "count":
            twins = [p for p in objs if sum(q.obj == p.obj for q in objs) > 1]
            if twins and rng.random() < 0.5:            # one too few
                objs.remove(rng.choice(twins))
                return State(tuple(objs))
            src = objs[i]
            new = Placed(src.shape, src.color, src.size, *rng.choice(free), uid=uid)
        else:
            kinds = {p.obj for p in objs}
            cands = [o for o in ALL_OBJECTS if o not in kinds]
            o = rng.choice(cands)
            new = Placed(o.shape, o.color, o.size, *rng.choice(free), uid=uid)
        objs.append(new)
        return State(tuple(objs))
    elif kind == "relation":
        if not state.relations:
            return None
        a, _, b = state.relations[0]
        pa, pb = objs[a], objs[b]
        objs[a], objs[b] = replace(pa, row=pb.row, col=pb.col), replace(pb, row=pa.row, col=pa.col)
    return State(tuple(objs), state.relations)


def flawed_draft(state: State, rng: random.Random, kinds=ERROR_KINDS):
    """(draft, critique, ops, kind): a draft with one error the judge names exactly."""
    for kind in rng.sample(list(kinds), len(kinds)):
        draft = corrupt(state, kind, rng)
        if draft is None:
            continue
        draft = State(draft.objects)                      # a drawing states no relations
        crit, ops = compare_state(state.spec(), draft)
        got = {e.kind for e in crit.errors}
        if kind == "missing" and got == {"count"}:
            kind = "count"                                # dropping one of twins is a count error
        if crit.ok or got != {kind}:
            raise Reject(f"judge saw {sorted(got)} for a planted {kind} error")
        fixed = apply_ops(draft, ops, random.Random(rng.random()))
        if not compare_state(state.spec(), fixed)[0].ok:
            raise Reject("the refine instruction does not repair the draft")
        return draft, crit, ops, kind
    return None


def draw_tag(cfg: BuildConfig, rng: np.random.Generator) -> str:
    """A GenEval tag drawn with ``cfg.tag_weights`` (one ``rng.random()``)."""
    tags = [t for t in TAGS if cfg.tag_weights.get(t, 0) > 0]
    w = np.array([cfg.tag_weights[t] for t in tags], float)
    # What ``rng.choice(len(tags), p=w / w.sum())`` does, without its argument checks (~30 us).
    cdf = np.cumsum(w / w.sum())
    return tags[int(np.searchsorted(cdf / cdf[-1], rng.random(), side="right"))]


def knowledge_facts(cfg: BuildConfig) -> tuple[Fact, ...]:
    """The trained facts whose form's tag (:data:`FORM_TAGS`) has a positive weight in ``cfg``."""
    trained = split_facts(cfg.knowledge_heldout, cfg.knowledge_split_seed)["trained"]
    return tuple(f for f in trained if cfg.tag_weights.get(FORM_TAGS[f.form], 0) > 0)


def knowledge_prompt(cfg: BuildConfig, rng: np.random.Generator,
                     tries: int = 100) -> tuple[Fact, str, object]:
    """(fact, prompt text, resolved spec): a trained fact drawn uniformly, named in a training image
    prompt; its resolved scene is never one of the held-out GenEval prompts (``heldout_fraction``).
    A count fact's objects share one drawn size (an attribute the prompt leaves open), so a plan that
    draws them at once says the resolved number ("draw four small green stars")."""
    facts = knowledge_facts(cfg)
    if not facts:
        raise ValueError("no trained fact has a form whose tag is in BuildConfig.tag_weights")
    fact = facts[int(rng.integers(len(facts)))]
    for _ in range(tries):
        text, spec = prompt_for(fact, rng)
        if fact.form == "count":
            size = SIZES[int(rng.integers(len(SIZES)))]
            spec = replace(spec, objects=tuple(replace(o, size=size) for o in spec.objects))
        if not is_heldout(spec, cfg.heldout_fraction):
            return fact, f"{PREFIXES[int(rng.integers(len(PREFIXES)))]} {text}", spec
    raise RuntimeError(f"no training scene for fact {fact.id!r} in {tries} tries "
                       f"(held-out fraction {cfg.heldout_fraction})")


def trajectory(cfg: BuildConfig, rng: np.random.Generator, prng: random.Random,
               refine: bool = True, prompt: tuple[str, str, object] | None = None,
               all_at_once: bool = False) -> Trajectory:
    """A seeded trajectory of a drawn training prompt, or of ``prompt`` = (tag, text, spec);
    ``all_at_once``: the first round adds every object (a knowledge count resolved in one plan)."""
    if prompt is None:
        tag = draw_tag(cfg, rng)
        spec, text = sample_split_prompt(rng, tag, cfg.heldout_fraction, heldout=False), None
    else:
        tag, text, spec = prompt
    final = realize(spec, rng, layout=cfg.layout)
    objs, n, budget = list(final.objects), len(final.objects), cfg.max_images
    rel = spec.relations[0] if spec.relations else None   # (uid a, rel, uid b): uids are indices
    order = [int(k) for k in rng.permutation(n)]
    # Bias to one object per round (the paper's trajectories average 3.5 images).
    k_add = min(n, budget) if rng.random() < 0.6 else int(rng.integers(1, min(n, budget) + 1))
    k_add = 1 if all_at_once else k_add
    cuts = (sorted(int(c) for c in rng.choice(np.arange(1, n), size=k_add - 1, replace=False))
            if k_add > 1 else [])
    chunks = [order[a:b] for a, b in zip([0, *cuts], [*cuts, n])]
    edit = rng.random() < cfg.edit_share
    mode = "plain"
    if rel is not None:
        a, r, b = rel
        ca = next(k for k, c in enumerate(chunks) if a in c)
        cb = next(k for k, c in enumerate(chunks) if b in c)
        if edit and len(chunks) < budget:
            mode = "swap"
        elif ca != cb and len(chunks[max(ca, cb)]) == 1:
            mode = "anchored"
    recolor = None                                        # (uid, attr, initial value) edit
    if edit and mode != "swap" and len(chunks) < budget:
        free = [(u, at) for u in range(n) for at in ("color", "size")
                if getattr(spec.objects[u], at) is None and sum(p.obj == objs[u].obj for p in objs) == 1]
        if free:
            u, at = free[int(rng.integers(len(free)))]
            vals = [v for v in (COLORS if at == "color" else SIZES) if v != getattr(objs[u], at)]
            recolor = (u, at, vals[int(rng.integers(len(vals)))])
    steps: list[tuple] = []                               # (ops, objs after, relation stated)
    cur: dict[int, Placed] = {}
    swapped = {}
    if mode == "swap":
        pa, pb = objs[rel[0]], objs[rel[2]]
        swapped = {rel[0]: replace(pa, row=pb.row, col=pb.col),
                   rel[2]: replace(pb, row=pa.row, col=pa.col)}
    for chunk in chunks:
        new = []
        for u in chunk:
            p = swapped.get(u, objs[u])
            if recolor and recolor[0] == u:
                p = replace(p, **{recolor[1]: recolor[2]})
            cur[u] = p
            new.append(p)
        anchor = None
        if mode == "anchored" and len(chunk) == 1 and chunk[0] in (rel[0], rel[2]):
            other = rel[2] if chunk[0] == rel[0] else rel[0]
            if other in cur and other not in chunk:
                anchor = (rel[1] if chunk[0] == rel[0] else INVERSE[rel[1]], cur[other].obj)
        steps.append(((Add(tuple(p.obj for p in new), anchor),), dict(cur), mode != "swap"))
        if recolor and recolor[0] in chunk:
            u, at, _ = recolor
            before = cur[u].obj
            cur[u] = objs[u] if u not in swapped else replace(swapped[u], **{at: getattr(objs[u], at)})
            steps.append(((SetAttr(before, getattr(objs[u], at)),), dict(cur), mode != "swap"))
    if mode == "swap":
        cur[rel[0]], cur[rel[2]] = objs[rel[0]], objs[rel[2]]
        steps.append(((Swap(objs[rel[0]].obj, objs[rel[2]].obj),), dict(cur), True))
    rounds, images = [], 0
    for k, (ops, objs_after, stated) in enumerate(steps):
        state = _rel_state(list(objs_after.values()), rel, stated)
        if rel is not None and stated and len(state.relations) == 1:
            a, r, b = state.relations[0]
            if not relation_holds(state.objects[a], r, state.objects[b]):
                raise Reject("constructed layout breaks the prompt relation")
        plan = plan_text(ops, state.spec(), prng)
        verdict, _ = compare_plan(state.spec(), spec)
        last = k == len(steps) - 1
        if not verdict.ok or (last and (verdict.objects or verdict.relations)):
            raise Reject(f"judge: plan {plan!r} vs prompt -> {critique_text(verdict)}")
        left = budget - images - (len(steps) - k)          # images to spare for a refine round
        rd = Round(ops, state, plan, state, critique_text(compare_state(state.spec(), state)[0], prng))
        if refine and left >= 1 and rng.random() < cfg.refine_share:
            got = flawed_draft(state, prng)
            if got is not None:
                draft, crit, fix, kind = got
                rd = Round(ops, state, plan, draft, critique_text(crit, prng), refine_text(fix, prng), kind)
        images += 1 + (rd.refine is not None)
        rounds.append(rd)
    return Trajectory(tag, text if text is not None else prompt_text(spec, prng), spec, rounds)


def op_names(t: Trajectory) -> list[str]:
    from ..world.language import parse_refine
    names = []
    for rd in t.rounds:
        names += [OP_NAMES[type(o)] for o in rd.ops]
        if rd.refine:
            names += [OP_NAMES[type(o)] for o in parse_refine(rd.refine)]
    return names


def perturb_plan(prev: State, state: State, spec, rng: random.Random):
    """A contradicting plan for round ``state``: (state', ops from prev, critique, fix ops, kind)."""
    kinds = ["shape", "extra", "count"]
    if any(o.color for o in spec.objects):
        kinds.append("color")
    if any(o.size for o in spec.objects):
        kinds.append("size")
    if state.relations:
        kinds.append("relation")
    for kind in rng.sample(kinds, len(kinds)):
        bad = corrupt(state, "extra" if kind == "count" and rng.random() < 0.5 else kind, rng)
        if bad is None:
            continue
        if kind == "relation":
            a, r, b = state.relations[0]
            bad = State(bad.objects, ((a, INVERSE[r], b),))
        crit, fix = compare_plan(bad.spec(), spec)
        if crit.ok:
            continue
        _, ops = compare_state(bad.spec(), prev)
        if not ops:
            continue
        try:
            fixed = apply_ops(prev, ops, random.Random(0))
            if not compare_state(bad.spec(), fixed)[0].ok and kind != "relation":
                continue
        except EditError:
            continue
        return bad, ops, crit, fix, sorted({e.kind for e in crit.errors})
    return None


def plan_critique(state: State, spec, rng) -> tuple[Critique, str]:
    c, _ = compare_plan(state.spec(), spec)
    return c, critique_text(c, rng)
