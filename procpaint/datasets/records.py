"""One record of each subset: construction (``construct``) -> JSON record + images to write.

A record is a dict (the on-disk format, data/README.md): ``segments`` is the ordered list of
text / image segments with loss flags and roles, exactly what :class:`procpaint.sequence.types.Sample`
holds once images are decoded. Images are returned as (relative path, (H, W, 3) uint8) and written
by the caller; image segments here name the path.

The multi-turn subset holds three kinds of record (:func:`multiturn_kind`, exact shares spread
evenly over indexes): fact-corpus records (kind ``fact``: :data:`FACTS_PER_RECORD` statements of
procpaint.world.facts in one CE-only text segment, no image), trajectories of a knowledge prompt
naming a trained fact (tag ``knowledge``), and trajectories of the world's GenEval-style prompts.
"""

from __future__ import annotations

import random

import numpy as np

from ..world.critiques import critique_text
from ..world.facts import fact_corpus
from ..world.judge import compare_state
from ..world.language import refine_text
from ..world.registry import build
from .config import BuildConfig
from .construct import (
    Reject,
    Round,
    flawed_draft,
    knowledge_facts,
    knowledge_prompt,
    op_names,
    perturb_plan,
    plan_critique,
    trajectory,
)

SUBSET_IDS = {"multiturn": 1, "conflict": 2, "alignment": 3}
MAX_ATTEMPTS = 20
FACTS_PER_RECORD = 8        # statements per fact-corpus record (~80 tokens)


class Context:
    """Per-process components (painter, judge) built from the config's class paths."""

    def __init__(self, cfg: BuildConfig):
        self.cfg = cfg
        self.painter = build(cfg.painter, image_size=cfg.image_size)
        self.judge = build(cfg.judge)
        self.detector = getattr(self.judge, "detector", None)


def is_positive(index: int, share: float) -> bool:
    """Exact ratios at any size: the first N samples hold round(N * share) positives, spread evenly."""
    return _before(index + 1, share) - _before(index, share) == 1


def _before(index: int, share: float) -> int:
    """Positives among the first ``index`` samples (see :func:`is_positive`)."""
    return int(index * share + 1e-9)


def multiturn_kind(cfg: BuildConfig, index: int) -> str:
    """"fact", "knowledge" or "trajectory": what multi-turn record ``index`` is. Exact shares
    (``fact_share``, ``knowledge_share`` of all records); both off when no trained fact's form has
    its tag in the mix (construct.knowledge_facts)."""
    if (cfg.fact_share <= 0 and cfg.knowledge_share <= 0) or not knowledge_facts(cfg):
        return "trajectory"
    if is_positive(index, cfg.fact_share):
        return "fact"
    rest = 1.0 - cfg.fact_share                      # knowledge among the non-fact records
    if rest > 0 and is_positive(index - _before(index, cfg.fact_share), min(1.0, cfg.knowledge_share / rest)):
        return "knowledge"
    return "trajectory"


def fact_statements(cfg: BuildConfig, index: int) -> list[tuple]:
    """(fact, statement) pairs of fact record ``index``: the k-th fact record states statements
    [k * FACTS_PER_RECORD, (k + 1) * FACTS_PER_RECORD) of the corpus in a seeded order, a fresh order
    for each pass over it, so the first ceil(corpus / FACTS_PER_RECORD) fact records state it all."""
    corpus = fact_corpus()
    k = _before(index, cfg.fact_share)
    out = []
    for s in range(k * FACTS_PER_RECORD, (k + 1) * FACTS_PER_RECORD):
        cycle, pos = divmod(s, len(corpus))
        order = np.random.default_rng([cfg.seed, 4241, cycle]).permutation(len(corpus))
        out.append(corpus[int(order[pos])])
    return out


class _Writer:
    """Collects segments and renders image segments (verifying a share of them with the detector)."""

    def __init__(self, ctx: Context, subset: str, index: int, shard: int, seed: int, rng: random.Random):
        self.ctx, self.subset, self.index, self.shard = ctx, subset, index, shard
        self.seed, self.rng = seed, rng
        self.segments, self.images = [], []

    def text(self, text: str, role: str, loss: bool):
        self.segments.append({"type": "text", "role": role, "text": text, "loss": loss})

    def image(self, state, loss: bool, expect=None):
        """Render ``state``; ``expect`` = (spec, critique) the detector must reproduce when checked."""
        img = self.ctx.painter.paint(state, self.seed)
        check = self.ctx.detector is not None and self.rng.random() < self.ctx.cfg.verify_images
        if expect is not None and check:
            spec, crit = expect
            seen, _ = compare_state(spec, self.ctx.detector.state(img))
            if seen.ok != crit.ok or {e.kind for e in seen.errors} != {e.kind for e in crit.errors}:
                raise Reject(f"detector disagrees on an image: {critique_text(seen)}")
        path = f"{self.subset}/images/{self.shard:05d}/{self.index:07d}-{len(self.images)}.png"
        h, w = img.shape[:2]
        self.images.append((path, img))
        self.segments.append({"type": "image", "role": "image", "path": path, "loss": loss,
                              "height": h, "width": w})

    def round(self, rd: Round, loss: bool, rng):
        self.text(rd.plan, "plan", loss)
        crit_drawn, _ = compare_state(rd.state.spec(), rd.drawn)
        # Only consistent images are generation targets (the paper keeps trajectories that pass its
        # consistency filter): a deliberately flawed draft is context for the critique and refine.
        self.image(rd.drawn, loss and rd.error is None, (rd.state.spec(), crit_drawn))
        self.text(rd.critique, "critique", loss)
        if rd.refine:
            self.text(rd.refine, "refine", loss)
            self.image(rd.state, loss, (rd.state.spec(), compare_state(rd.state.spec(), rd.state)[0]))


def _multiturn(w: _Writer, cfg, rng, prng, positive, knowledge: bool = False):
    extra = {}
    if knowledge:
        fact, text, spec = knowledge_prompt(cfg, rng)
        t = trajectory(cfg, rng, prng, prompt=("knowledge", text, spec), all_at_once=fact.form == "count")
        extra["knowledge"] = {"fact": fact.id, "category": fact.category, "form": fact.form}
    else:
        t = trajectory(cfg, rng, prng)
    w.text(t.prompt, "prompt", False)
    for rd in t.rounds:
        w.round(rd, True, prng)
    errs = [rd.error for rd in t.rounds if rd.error]
    return t, {"eos": True, "label": None, "ops": op_names(t), "errors": errs, **extra}


def _knowledge(w: _Writer, cfg, rng, prng, positive):
    return _multiturn(w, cfg, rng, prng, positive, knowledge=True)


def _fact(w: _Writer, cfg, rng, prng, positive):
    """A fact-corpus record: statements only, every token a CE target, no image, no EOS."""
    said = fact_statements(cfg, w.index)
    w.text(" ".join(s for _, s in said), "fact", True)
    return None, {"kind": "fact", "tag": "fact", "prompt": None, "eos": False, "label": None, "ops": [],
                  "errors": [], "facts": [f.id for f, _ in said]}


def _conflict(w: _Writer, cfg, rng, prng, positive):
    t = trajectory(cfg, rng, prng)
    k = int(rng.integers(len(t.rounds)))
    w.text(t.prompt, "prompt", False)
    for rd in t.rounds[:k]:
        w.round(rd, False, prng)
    rd = t.rounds[k]
    if positive:
        _, crit = plan_critique(rd.state, t.spec, prng)
        w.text(rd.plan, "plan", False)
        w.text(crit, "critique", True)
        return t, {"eos": False, "label": "positive", "ops": [], "errors": []}
    prev = t.rounds[k - 1].state if k else type(rd.state)()
    got = perturb_plan(prev, rd.state, t.spec, prng)
    if got is None:
        raise Reject("no contradicting perturbation applies")
    bad, ops, crit, fix, kinds = got
    from ..world.language import plan_text
    w.text(plan_text(ops, bad.spec(), prng), "plan", False)
    w.text(critique_text(crit, prng), "critique", True)
    w.text(refine_text(fix, prng), "refine", True)
    return t, {"eos": False, "label": "negative", "ops": [], "errors": kinds}


def _alignment(w: _Writer, cfg, rng, prng, positive):
    t = trajectory(cfg, rng, prng, refine=False)
    rd = t.rounds[int(rng.integers(len(t.rounds)))]
    w.text(rd.plan, "plan", False)
    spec = rd.state.spec()
    if positive:
        crit, _ = compare_state(spec, rd.state)
        w.image(rd.state, False, (spec, crit))
        w.text(critique_text(crit, prng), "critique", True)
        return t, {"eos": False, "label": "positive", "ops": [], "errors": []}
    got = flawed_draft(rd.state, prng)
    if got is None:
        raise Reject("no error applies to this state")
    draft, crit, fix, kind = got
    w.image(draft, False, (spec, crit))
    w.text(critique_text(crit, prng), "critique", True)
    w.text(refine_text(fix, prng), "refine", True)
    return t, {"eos": False, "label": "negative", "ops": [], "errors": [kind]}


MAKERS = {"multiturn": _multiturn, "conflict": _conflict, "alignment": _alignment}
MULTITURN_MAKERS = {"trajectory": _multiturn, "knowledge": _knowledge, "fact": _fact}


def make_record(ctx: Context, subset: str, index: int, shard: int) -> tuple[dict, list, int]:
    """-> (record, [(relative path, (H, W, 3) uint8)], rejected attempts)."""
    cfg = ctx.cfg
    share = {"conflict": cfg.conflict_positive, "alignment": cfg.alignment_positive}.get(subset)
    positive = share is not None and is_positive(index, share)
    maker = MULTITURN_MAKERS[multiturn_kind(cfg, index)] if subset == "multiturn" else MAKERS[subset]
    for attempt in range(MAX_ATTEMPTS):
        rng = np.random.default_rng([cfg.seed, SUBSET_IDS[subset], index, attempt])
        prng = random.Random(int(rng.integers(1 << 62)))
        vrng = random.Random(int(rng.integers(1 << 62)))
        w = _Writer(ctx, subset, index, shard, int(rng.integers(1 << 31)), vrng)
        try:
            t, extra = maker(w, cfg, rng, prng, positive)
        except Reject:
            continue
        head = {"tag": t.tag, "prompt": t.prompt} if t is not None else {}    # a fact record: in extra
        rec = {"id": f"{subset}-{index:07d}", "kind": subset, **head, "segments": w.segments, **extra}
        return rec, w.images, attempt
    raise RuntimeError(f"{subset} sample {index}: the judge rejected {MAX_ATTEMPTS} constructions in a row "
                       f"(seed {cfg.seed}); this indicates a painter/judge mismatch")
