"""The knowledge benchmark: the WISE analogue of the painting world.

WISE (Niu et al., 2025) asks for images whose content is named indirectly ("the flower that
symbolises ..."), so the model must resolve world knowledge before drawing. Here every prompt names
a colour, a shape, a count or a relation through a fact, and carries the scene graph the fact
resolves to (``spec``), so scoring is exact: the detector's state of the image must satisfy the
scene graph (:func:`procpaint.world.scene.satisfies`: exactly those objects, attributes matching,
relations by the world's GenEval rule on layout cells).

    cultural   "a photo of a circle the color of a ripe banana"         -> yellow circle
    time       "a photo of as many green stars as there are seasons in a year" -> four green stars
    space      "a photo of a red circle and a blue square. the circle is where the sky is and the
                square is where the ground is."                          -> circle above square
    biology / physics / chemistry
               "a photo of a blue shape with three corners"            -> blue triangle

Categories follow WISE's six (cultural common sense, time, space, and natural science split into
biology, physics, chemistry) and the default set keeps WISE's prompt shares (400/167/133/100/100/100
of 1000); the overall score is the prompt-share weighted mean over categories, as WISE's overall.

**Held-out facts.** The built training data states every fact in a text-only fact corpus and uses
only the ``trained`` half of :func:`procpaint.world.facts.split_facts` in image prompts (whose plans
resolve the fact). By default the benchmark asks about ``heldout`` facts only, which a model has read
but never painted: a single-pass model must map the phrase to pixels directly, a process model can
write the resolved plan first. ``split="trained"`` asks about the trained facts instead (labelled:
each line carries ``split`` and ``fact``), so the gap between the two is visible.
"""

from __future__ import annotations

import numpy as np

from ..world.critiques import critique_text
from ..world.detect import Detector
from ..world.facts import (  # noqa: F401  (re-exported: the benchmark's names)
    CATEGORIES,
    COLOR_FACTS,
    COUNT_FACTS,
    FACTS,
    FORMS,
    HELDOUT_SHARE,
    SHAPE_FACTS,
    SPACE_FACTS,
    SPLITS,
    WISE_SHARES,
    prompt_for,
    split_facts,
    vocabulary,
)
from ..world.judge import compare_state
from ..world.scene import Obj, Spec, satisfies
from .geneval import spec_from_json, spec_to_json

SPLIT_NAMES = {"heldout": "held-out", "trained": "trained", "all": "all"}


def facts_of(split: str = "heldout", share: float = HELDOUT_SHARE, split_seed: int = 0) -> tuple:
    """The facts a benchmark of ``split`` ("heldout", "trained" or "all") asks about."""
    if split == "all":
        return FACTS
    if split not in SPLITS:
        raise ValueError(f"unknown knowledge split {split!r}; known: {(*SPLITS, 'all')}")
    return split_facts(share, split_seed)[split]


def make_prompt(rng: np.random.Generator, category: str, split: str = "heldout", *,
                share: float = HELDOUT_SHARE, split_seed: int = 0) -> dict:
    """One metadata line: category, form, fact, split, prompt text, resolved scene graph. The form is
    drawn among those ``category`` has facts of in ``split``, then a fact of that form."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown knowledge category {category!r}; known: {CATEGORIES}")
    pool = [f for f in facts_of(split, share, split_seed) if f.category == category]
    forms = [f for f in FORMS if any(x.form == f for x in pool)]
    if not forms:
        raise ValueError(f"no {split} facts of category {category!r} (held-out share {share})")
    form = forms[rng.integers(len(forms))]
    cands = sorted((f for f in pool if f.form == form), key=lambda f: f.phrase)
    fact = cands[rng.integers(len(cands))]
    text, spec = prompt_for(fact, rng)
    return {"tag": category, "category": category, "form": form, "split": split, "fact": fact.id,
            "prompt": f"a photo of {text}", "spec": spec_to_json(spec), **_clauses(spec)}


def _clauses(spec: Spec) -> dict:
    """GenEval-style include/exclude for the resolved scene (so GenEval's tools can read the file)."""
    groups: list[tuple[Obj, int]] = []
    for o in spec.objects:
        if groups and groups[-1][0] == o:
            groups[-1] = (o, groups[-1][1] + 1)
        else:
            groups.append((o, 1))
    include = [{"class": o.shape, "count": n, "color": o.color} for o, n in groups]
    out = {"include": include}
    if spec.relations:
        (a, rel, b), = spec.relations
        include[a]["position"] = [rel, b]
        if a < b:              # GenEval needs the target clause first
            include[a], include[b] = include[b], include[a]
            include[b]["position"] = [rel, a]
    if len(groups) == 1 and groups[0][1] > 1:
        out["exclude"] = [{"class": groups[0][0].shape, "count": groups[0][1] + 1}]
    return out


def generate_metadata(n: int = 500, seed: int = 0, shares: dict[str, int] | None = None,
                      split: str = "heldout", *, share: float = HELDOUT_SHARE,
                      split_seed: int = 0) -> list[dict]:
    """``n`` knowledge prompts split over categories by ``shares`` (default WISE's), seeded, about the
    facts of ``split`` (default the held-out facts; ``share`` / ``split_seed`` as the data was built
    with, procpaint.datasets.BuildConfig.knowledge_heldout / knowledge_split_seed)."""
    shares = shares or WISE_SHARES
    total = sum(shares.values())
    counts = {c: int(round(n * shares.get(c, 0) / total)) for c in CATEGORIES}
    out = []
    for k, c in enumerate(CATEGORIES):
        rng = np.random.default_rng([seed, 6151, k])
        out += [make_prompt(rng, c, split, share=share, split_seed=split_seed) for _ in range(counts[c])]
    return out


def score_image(image: np.ndarray, metadata: dict, detector: Detector | None = None) -> tuple[bool, str]:
    """Exact: the detected state must satisfy the resolved scene graph. Returns (correct, reason)."""
    spec = spec_from_json(metadata["spec"])
    state = (detector or Detector()).state(image)
    if satisfies(state, spec):
        return True, ""
    crit, _ = compare_state(spec, state)
    return False, critique_text(crit) if not crit.ok else "relations do not hold"


def summarize(results: list[dict], shares: dict[str, int] | None = None) -> dict:
    """Per-category accuracy and ``overall`` = share-weighted mean over present categories."""
    shares = shares or WISE_SHARES
    by: dict[str, list[bool]] = {}
    for r in results:
        by.setdefault(r["tag"], []).append(bool(r["correct"]))
    scores = {c: float(np.mean(by[c])) for c in CATEGORIES if c in by}
    w = {c: shares.get(c, 0) for c in scores}
    tot = sum(w.values())
    overall = sum(scores[c] * w[c] for c in scores) / tot if tot else float("nan")
    return {**scores, "overall": overall, "images": {c: len(by[c]) for c in scores}}


