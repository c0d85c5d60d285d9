"""Self-sampled instruction-intermediate conflict data (the paper's main variant).

The paper samples plans from its multi-turn model and lets GPT judge each against the prompt. Here
(``BuildConfig.conflict_source="self"``, ``build_dataset(..., checkpoint=CKPT)``):

1. **Prompts** come from the *training* distribution: the symbolic builder's tag weights and
   ``sample_split_prompt(..., heldout=False)``, seeded per (sample, attempt). Held-out (evaluation)
   prompts never reach a record, however the checkpoint was trained.
2. **Plans**: the checkpoint writes one trajectory per prompt in ``planner`` mode (plan, image,
   plan, ...) with ``num_steps=2``; only the plan texts are used (an image costs one Euler step).
3. **Judge**: every plan is parsed with the world grammar and judged against the prompt by the
   configured judge (``judge_plan``): a contradiction is a negative (critique + ``<refine>``), a
   consistent plan (complete or not) a positive (explanation critique). Unparseable plans
   (ungrammatical, or cut off by ``max_text_tokens``) are counted and skipped: the critique grammar
   has no words for "malformed", and a judge cannot name a contradiction in a text it cannot read.
4. **Context** of plan k = prompt + the model's own plans 0..k-1, each followed by the painter's
   image of what that plan describes (its ops applied to the previous state, else a fresh layout of
   its description) and the judge's "matches" critique -- the symbolic builder's record shape. The
   model's own 2-step images are noise and the skill trained here (plan vs prompt) reads texts.
   Plan k is usable only when plans 0..k-1 parse, are consistent with the prompt and can be drawn.
5. **Ratio**: sample i wants the label ``is_positive(i, conflict_positive)``; up to
   ``self_attempts`` fresh prompts are sampled until a trajectory has a usable plan with that label
   (one is picked at random). Otherwise the first attempt's usable plan of the other label is kept
   (``off_ratio``); with none at all the sample is dropped (``unfilled``). The manifest reports the
   natural positive share of all judged plans beside the built one.

Determinism: prompts, generation seeds (per shard, attempt and batch), judge phrasing and rendering
are pure functions of (config, checkpoint weights); the weights are hashed into the subset's state.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..world.critiques import critique_text
from ..world.edit import EditError, apply_ops
from ..world.judge import compare_state
from ..world.language import OP_NAMES, ParseError, parse_plan, prompt_text
from ..world.prompts import sample_split_prompt
from ..world.scene import State, realize
from .construct import Reject, draw_tag
from .records import SUBSET_IDS, Context, _Writer, is_positive

STREAM = 17                     # seed-stream tag: self-sampling draws never alias the symbolic builder's
PLAN_TOKENS = 96                # max_text_tokens per plan: composite descriptions run ~40 words
COUNTERS = ("trajectories", "plans", "parse_failures", "natural_positive", "natural_negative",
            "candidates", "off_ratio", "unfilled", "rejected_renders")
_GENERATORS: dict = {}


@dataclass
class Candidate:
    """One usable sampled plan with its judged target and the clean history before it."""

    round: int
    plan: str
    positive: bool
    critique: str
    refine: str | None
    errors: list[str]
    ops: list[str]
    context: list = field(default_factory=list)   # [(plan text, Spec, State)] of rounds 0..round-1


def checkpoint_digest(path: str | Path) -> str:
    """sha256 over the checkpoint's bytes (a .ckpt file, or an export directory's files)."""
    from ..inference.loading import CheckpointError

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    names = ("model.safetensors", "model_config.json", "tokenizer.json", "config.yaml")
    files = [p / n for n in names if (p / n).is_file()] if p.is_dir() else [p]
    if p.is_dir() and not (p / "model.safetensors").is_file():
        raise CheckpointError(f"{p}: export directory lacks model.safetensors")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def _generator(checkpoint: str, device: str):
    key = (str(checkpoint), str(device))
    if key not in _GENERATORS:
        from ..inference import load_generator

        _GENERATORS.clear()
        _GENERATORS[key] = load_generator(checkpoint, device)
    return _GENERATORS[key]


def _generate(gen, prompts: list[str], gcfg) -> list:
    """One ``generate`` call (a seam: tests script the model's plans here)."""
    return gen.generate(prompts, gcfg)


def draw_prompt(cfg, index: int, attempt: int):
    """-> (tag, spec, prompt text, np rng, python rng) for one (sample, attempt); never held out."""
    rng = np.random.default_rng([cfg.seed, SUBSET_IDS["conflict"], index, attempt, STREAM])
    tag = draw_tag(cfg, rng)
    spec = sample_split_prompt(rng, tag, cfg.heldout_fraction, heldout=False)
    prng = random.Random(int(rng.integers(1 << 62)))
    return tag, spec, prompt_text(spec, prng), rng, prng


_PLAN = re.compile(r"^\s*<ins>([^<>]*)</ins>\s*<des>([^<>]*)</des>\s*$")


def normalise_plan(text: str | None) -> str | None:
    """A decoded plan (``<ins> w w </ins> <des> ... </des>``) in the record's spacing, or None."""
    m = _PLAN.match(text or "")
    if not m:
        return None
    ins, des = " ".join(m.group(1).split()), " ".join(m.group(2).split())
    return f"<ins>{ins}</ins><des>{des}</des>" if ins and des else None


def draw_state(prev: State, ops, spec, rng: np.random.Generator) -> State | None:
    """A drawing of a plan's description: its ops applied to ``prev`` when they reproduce the
    description, else a fresh layout; None when the description cannot be drawn."""
    try:
        nxt = State(apply_ops(prev, ops, random.Random(int(rng.integers(1 << 62)))).objects)
        if compare_state(spec, nxt)[0].ok:
            return nxt
    except EditError:
        pass
    try:
        nxt = State(realize(spec, rng).objects)
    except ValueError:                       # too many objects, or relations no layout satisfies
        return None
    return nxt if compare_state(spec, nxt)[0].ok else None


def candidates(judge, prompt: str, plans: list[str], rng, prng, st: dict) -> list[Candidate]:
    """Judge every sampled plan (statistics) and return those with a clean history."""
    out, context, clean, prev = [], [], True, State()
    for k, raw in enumerate(plans):
        st["plans"] += 1
        plan = normalise_plan(raw)
        try:
            if plan is None:
                raise ParseError(f"not <ins>...</ins><des>...</des>: {raw!r}")
            ops, spec = parse_plan(plan)
        except ParseError:
            st["parse_failures"] += 1
            clean = False
            continue
        verdict, crit, fix = judge.judge_plan(prompt, plan, prng)
        st["natural_positive" if verdict.ok else "natural_negative"] += 1
        if clean and (verdict.ok or fix):     # a negative's target needs its correction
            out.append(Candidate(k, plan, verdict.ok, crit, fix, sorted({e.kind for e in verdict.errors}),
                                 [OP_NAMES[type(o)] for o in ops], list(context)))
        state = draw_state(prev, ops, spec, rng) if clean and verdict.ok else None
        clean = state is not None
        if clean:
            context.append((plan, spec, state))
            prev = state
    st["candidates"] += len(out)
    return out


def _write(ctx: Context, index: int, shard: int, tag: str, prompt: str, options: list[Candidate], prng):
    """-> (record, images, rejected renders) for the first option the detector re-check accepts."""
    order = prng.sample(options, len(options))
    for rejected, c in enumerate(order):
        w = _Writer(ctx, "conflict", index, shard, prng.getrandbits(31), random.Random(prng.getrandbits(62)))
        try:
            w.text(prompt, "prompt", False)
            for plan, spec, state in c.context:
                crit, _ = compare_state(spec, state)
                w.text(plan, "plan", False)
                w.image(state, False, (spec, crit))
                w.text(critique_text(crit, prng), "critique", False)
        except Reject:
            continue
        w.text(c.plan, "plan", False)
        w.text(c.critique, "critique", True)
        if not c.positive:
            w.text(c.refine, "refine", True)
        rec = {"id": f"conflict-{index:07d}", "kind": "conflict", "tag": tag, "prompt": prompt,
               "segments": w.segments, "eos": False, "label": "positive" if c.positive else "negative",
               "ops": c.ops, "errors": c.errors}
        return rec, w.images, rejected
    return None


def shard_records(ctx: Context, checkpoint: str, device: str, shard: int, start: int, end: int):
    """-> ([(record, images, rejected)] in index order, self-sampling statistics) of one shard."""
    from ..inference import GenerationConfig

    cfg = ctx.cfg
    gen = _generator(checkpoint, device)
    st = {k: 0 for k in COUNTERS} | {"end_reasons": Counter()}
    gcfg = GenerationConfig(mode="planner", max_rounds=cfg.self_rounds, num_steps=2,
                            temperature=cfg.self_temperature, max_text_tokens=PLAN_TOKENS)
    want = {i: is_positive(i, cfg.conflict_positive) for i in range(start, end)}
    picked, fallback, pending = {}, {}, list(range(start, end))
    for attempt in range(cfg.self_attempts):
        if not pending:
            break
        drawn = [draw_prompt(cfg, i, attempt) for i in pending]
        results = []
        for b in range(0, len(pending), cfg.self_batch):
            seed = int(np.random.default_rng([cfg.seed, STREAM, shard, attempt, b]).integers(1 << 31))
            results += _generate(gen, [d[2] for d in drawn[b:b + cfg.self_batch]], replace(gcfg, seed=seed))
        for i, (tag, _, prompt, rng, prng), res in zip(pending, drawn, results):
            st["trajectories"] += 1
            st["end_reasons"][res.end_reason] += 1
            plans = [s.text for s in res.stages if s.kind == "plan"]
            cands = candidates(ctx.judge, prompt, plans, rng, prng, st)
            hit = [c for c in cands if c.positive == want[i]]
            if hit:
                picked[i] = (tag, prompt, hit, prng)
            elif cands and i not in fallback:
                fallback[i] = (tag, prompt, cands, prng)
        pending = [i for i in pending if i not in picked]
    made = []
    for i in range(start, end):
        got = picked.get(i) or fallback.get(i)
        rec = got and _write(ctx, i, shard, *got)
        if not rec:
            st["unfilled"] += 1
            continue
        st["off_ratio"] += i not in picked
        st["rejected_renders"] += rec[2]
        made.append(rec)
    if not made:
        raise RuntimeError(
            f"{checkpoint}: no usable plan for any of the {end - start} samples of conflict shard {shard} "
            f"({st['plans']} plans sampled, {st['parse_failures']} unparseable, end reasons "
            f"{dict(st['end_reasons'])}); self-sampling needs a checkpoint trained on multi-turn data")
    return made, st


def merge_stats(stats: list[dict]) -> dict:
    """Shard statistics -> the manifest's ``self_sampled`` entry."""
    tot = {k: sum(s[k] for s in stats) for k in COUNTERS}
    reasons = Counter()
    for s in stats:
        reasons.update(s["end_reasons"])
    judged = tot["natural_positive"] + tot["natural_negative"]
    return {**tot, "end_reasons": dict(sorted(reasons.items())),
            "natural_positive_share": round(tot["natural_positive"] / judged, 4) if judged else None,
            "parse_failure_share": round(tot["parse_failures"] / tot["plans"], 4) if tot["plans"] else None}
