"""The GenEval benchmark in the painting world: prompts, metadata and GenEval's scoring rules.

Format and rules follow GenEval (Ghosh et al., 2023; github.com/djghosh13/geneval,
``prompts/evaluation_metadata.jsonl`` and ``evaluation/evaluate_images.py``), re-implemented here:

    {"tag": "position", "include": [{"class": "square", "count": 1},
                                    {"class": "circle", "count": 1, "position": ["right of", 0]}],
     "prompt": "a photo of a purple circle right of a red square"}

* ``include`` clauses are ANDed: the ``count`` most confident detections of the class must exist;
  with ``color`` at least ``count`` of them must have it; with ``position: [rel, i]`` every kept
  object must stand in ``rel`` to every object kept by include clause ``i`` (GenEval's rule,
  :func:`procpaint.world.scene.relative_position` -- the world's own definition of a relation, so
  oracle layouts and the judge agree with this scorer by construction).
* ``exclude`` clauses fail when ``count`` or more objects of the class are detected.
* tag score = mean over images; overall = unweighted mean over the six tags.

Classes are the world's six shapes, colours GenEval's ten. Detections come from the world's
weight-free :class:`~procpaint.world.Detector`, whose confidence is calibrated on renders of known
scenes (clean and degraded true objects score above 0.9; 4-pixel smudges, blobs and half shapes
mostly low: benchmarks/results/2026-12-02-judge-robustness-cpu.md). GenEval's filter is mirrored:
keep detections above ``THRESHOLD`` (0.3), above ``COUNTING_THRESHOLD`` (0.9) for the counting tag,
at most ``MAX_OBJECTS`` (16) per class, most confident first.

Prompts and the held-out split: the world holds out a hash bucket of canonical prompts
(:func:`procpaint.world.prompts.is_heldout`, 5% by default) that no training build ever uses, and
every prompt here comes from that bucket. The world is small (6 shapes: GenEval's attribute-free
``single_object`` template has only 6 distinct prompts, one of them held out), so prompts of every
tag may state colours (and sizes) that GenEval's template would not; the metadata still checks
exactly what GenEval's tag checks (``single_object`` checks the class, not the stated colour), and
the full scene graph rides along under the extra key ``spec`` (GenEval's tools ignore extra keys).
Distinct held-out prompts are used first; when a tag's pool is smaller than its share of the set,
the pool is cycled, so such prompts get more images rather than the tag fewer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cache

import numpy as np

from ..world.detect import Detection, Detector
from ..world.language import prompt_text
from ..world.prompts import is_heldout, prompt_key
from ..world.render import inside, unit_stats
from ..world.scene import (
    COLORS,
    POSITION_THRESHOLD,  # noqa: F401  (re-exported: GenEval's constant)
    RELATIONS,
    SHAPES,
    SIZES,
    Obj,
    Spec,
    relative_position,
)

GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# GenEval's own prompt counts per tag (553 in all).
TAG_COUNTS = {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100,
              "color_attr": 100}
# GenEval's evaluate_images.py: a detection is kept when its confidence is above THRESHOLD, above
# COUNTING_THRESHOLD for the counting tag, at most MAX_OBJECTS per class (no NMS by default).
THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
MIN_CONFIDENCE = THRESHOLD        # the old name, kept for callers
HELDOUT_FRACTION = 0.05           # procpaint.datasets.DataConfig.heldout_fraction


# ---------------------------------------------------------------- scene graphs <-> JSON

def spec_to_json(spec: Spec) -> dict:
    return {"objects": [{"shape": o.shape, "color": o.color, "size": o.size} for o in spec.objects],
            "relations": [list(r) for r in spec.relations]}


def spec_from_json(data: dict) -> Spec:
    try:
        objs = tuple(Obj(o["shape"], o.get("color"), o.get("size")) for o in data["objects"])
        rels = tuple((int(a), str(r), int(b)) for a, r, b in data.get("relations", []))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"bad scene graph {data!r}: {exc}") from exc
    return Spec(objs, rels)


# ---------------------------------------------------------------- prompts and metadata

def _spec_for_tag(rng: np.random.Generator, tag: str) -> Spec:
    """A scene graph with GenEval's structure for ``tag``; colours are optional where GenEval's
    template has none (they enlarge the held-out pool), sizes optional everywhere (as the world's
    own prompts)."""
    def obj(shape, color_p):
        color = COLORS[rng.integers(len(COLORS))] if rng.random() < color_p else None
        size = SIZES[rng.integers(len(SIZES))] if rng.random() < 0.25 else None
        return Obj(shape, color, size)

    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:2]]
    if tag == "single_object":
        return Spec((obj(shapes[0], 0.8),))
    if tag == "colors":
        return Spec((obj(shapes[0], 1.0),))
    if tag == "counting":
        o = obj(shapes[0], 0.8)
        return Spec((Obj(o.shape, o.color),) * int(rng.integers(2, 5)))    # no sizes on groups
    if tag == "two_object":
        return Spec((obj(shapes[0], 0.8), obj(shapes[1], 0.8)))
    if tag == "position":
        return Spec((obj(shapes[0], 0.8), obj(shapes[1], 0.8)),
                    ((0, RELATIONS[rng.integers(len(RELATIONS))], 1),))
    if tag == "color_attr":
        c = [COLORS[i] for i in rng.permutation(len(COLORS))[:2]]
        a, b = obj(shapes[0], 0.0), obj(shapes[1], 0.0)
        return Spec((Obj(a.shape, c[0], a.size), Obj(b.shape, c[1], b.size)))
    raise ValueError(f"unknown GenEval tag {tag!r}; known: {GENEVAL_TAGS}")


def clauses(tag: str, spec: Spec) -> tuple[list[dict], list[dict]]:
    """GenEval (include, exclude) clauses for a scene graph of ``tag``'s structure."""
    o = spec.objects
    with_color = tag in ("colors", "color_attr")

    def clause(obj: Obj, count: int = 1) -> dict:
        c = {"class": obj.shape, "count": count}
        if with_color and obj.color is not None:
            c["color"] = obj.color
        return c

    if tag in ("single_object", "colors"):
        return [clause(o[0])], []
    if tag == "counting":
        return [clause(o[0], len(o))], [{"class": o[0].shape, "count": len(o) + 1}]
    if tag in ("two_object", "color_attr"):
        return [clause(o[0]), clause(o[1])], []
    if tag == "position":
        (a, rel, b), = spec.relations
        return [clause(o[b]), {**clause(o[a]), "position": [rel, 0]}], []
    raise ValueError(f"unknown GenEval tag {tag!r}; known: {GENEVAL_TAGS}")


def entry(tag: str, spec: Spec) -> dict:
    """One ``evaluation_metadata.jsonl`` line (GenEval keys plus ``spec``)."""
    include, exclude = clauses(tag, spec)
    out = {"tag": tag, "include": include}
    if exclude:
        out["exclude"] = exclude
    out["prompt"] = prompt_text(spec, None)
    out["spec"] = spec_to_json(spec)
    return out


def generate_metadata(counts: dict[str, int] | None = None, seed: int = 0,
                      heldout_fraction: float = HELDOUT_FRACTION, max_stale: int = 1000) -> list[dict]:
    """Seeded GenEval metadata, every prompt from the world's held-out split.

    ``counts``: prompts per tag (default GenEval's). Distinct prompts first; a tag whose held-out
    pool runs dry (``max_stale`` draws without a new one) cycles through its pool in seeded order.
    """
    counts = TAG_COUNTS if counts is None else counts
    out = []
    for t, tag in enumerate(GENEVAL_TAGS):
        n = counts.get(tag, 0)
        rng = np.random.default_rng([seed, 4271, t])
        pool: dict[str, Spec] = {}
        stale = 0
        while len(pool) < n and stale < max_stale:
            spec = _spec_for_tag(rng, tag)
            key = prompt_key(spec)
            if key in pool or not is_heldout(spec, heldout_fraction):
                stale += 1
                continue
            pool[key], stale = spec, 0
        if not pool and n:
            raise RuntimeError(f"no held-out {tag} prompt in {max_stale} draws (fraction {heldout_fraction})")
        specs = list(pool.values())
        order = rng.permutation(len(specs))
        out += [entry(tag, specs[order[i % len(specs)]]) for i in range(n)]
    return out


@cache
def _default() -> tuple[str, ...]:
    import json
    return tuple(json.dumps(e) for e in generate_metadata())


def default_metadata() -> list[dict]:
    """The fixed default set: GenEval's 553 prompts' tag counts, seed 0, 5% held-out split."""
    import json
    return [json.loads(s) for s in _default()]


# ---------------------------------------------------------------- detections

@dataclass(frozen=True)
class Box:
    """A detection as GenEval sees it: box (x1, y1, x2, y2) in pixels, confidence, colour."""

    shape: str
    color: str
    box: tuple[float, float, float, float]
    confidence: float


@cache
def unit_box(shape: str, n: int = 400) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of the unit shape in its [-1, 1]^2 frame."""
    t = (np.arange(n) + 0.5) / n * 2 - 1
    x, y = np.meshgrid(t, t)
    m = inside(shape, x, y)
    return float(x[m].min()), float(y[m].min()), float(x[m].max()), float(y[m].max())


def confidence(d: Detection) -> float:
    """The detector's calibrated confidence in [0, 1] (:func:`procpaint.world.detect.confidence`)."""
    return float(min(max(d.confidence, 0.0), 1.0))


def to_box(d: Detection) -> Box:
    """The detector reports the coverage centroid and half-extent; the box is the fitted template's."""
    _, ux, uy = unit_stats(d.shape)
    x, y = d.cx - d.r * ux, d.cy - d.r * uy                 # template centre
    x0, y0, x1, y1 = unit_box(d.shape)
    return Box(d.shape, d.color, (x + d.r * x0, y + d.r * y0, x + d.r * x1, y + d.r * y1), confidence(d))


def detect(image: np.ndarray, detector: Detector | None = None,
           min_confidence: float | None = None, *, tag: str | None = None,
           max_objects: int = MAX_OBJECTS) -> dict[str, list[Box]]:
    """(H, W, 3) uint8 image -> {class: boxes sorted by confidence, most confident first}.

    GenEval's filter: keep detections whose confidence is *above* the threshold -- ``THRESHOLD``
    (0.3), or ``COUNTING_THRESHOLD`` (0.9) when ``tag`` is ``"counting"`` -- then at most
    ``max_objects`` (16) per class, most confident first. ``min_confidence`` overrides the threshold.
    """
    return boxes((detector or Detector()).detect(image), min_confidence, tag=tag, max_objects=max_objects)


def boxes(detections: list[Detection], min_confidence: float | None = None, *, tag: str | None = None,
          max_objects: int = MAX_OBJECTS) -> dict[str, list[Box]]:
    """GenEval's filter on detections already made (see :func:`detect`)."""
    if min_confidence is None:
        min_confidence = COUNTING_THRESHOLD if tag == "counting" else THRESHOLD
    found: dict[str, list[Box]] = {}
    for d in detections:
        b = to_box(d)
        if b.confidence > min_confidence:
            found.setdefault(b.shape, []).append(b)
    return {k: sorted(v, key=lambda b: -b.confidence)[:max_objects] for k, v in found.items()}


# ---------------------------------------------------------------- GenEval's rules

def evaluate(objects: dict[str, list[Box]], metadata: dict) -> tuple[bool, str]:
    """GenEval's verdict for one image: (correct, reason), reasons one per failed clause."""
    correct, reasons, groups = True, [], []
    for req in metadata.get("include", []):
        cls, count = req["class"], req["count"]
        kept = objects.get(cls, [])[:count]
        ok = True
        if len(kept) < count:
            ok = False
            reasons.append(f"expected {cls}>={count}, found {len(kept)}")
        else:
            if "color" in req:
                colors = Counter(b.color for b in kept)
                if colors[req["color"]] < count:
                    ok = False
                    reasons.append(f"expected {req['color']} {cls}>={count}, found "
                                   + ", ".join(f"{n} {c}" for c, n in sorted(colors.items())))
            if "position" in req and ok:
                rel, target = req["position"]
                if target >= len(groups) or groups[target] is None:
                    ok = False
                    reasons.append(f"no target for {cls} to be {rel}")
                else:
                    for obj in kept:
                        bad = next((t for t in groups[target]
                                    if rel not in relative_position(obj.box, t.box)), None)
                        if bad is not None:
                            got = relative_position(obj.box, bad.box)
                            ok = False
                            reasons.append(f"expected {cls} {rel} target, found "
                                           f"{' and '.join(sorted(got)) or 'no relation to'} target")
                            break
        correct &= ok
        groups.append(kept if ok else None)
    for req in metadata.get("exclude", []):
        found = len(objects.get(req["class"], []))
        if found >= req["count"]:
            correct = False
            reasons.append(f"expected {req['class']}<{req['count']}, found {found}")
    return correct, "\n".join(reasons)


def summarize(results: list[dict], tags=GENEVAL_TAGS) -> dict:
    """Per-tag accuracy (mean over images) and ``overall`` (unweighted mean over present tags)."""
    by_tag: dict[str, list[bool]] = {}
    for r in results:
        by_tag.setdefault(r["tag"], []).append(bool(r["correct"]))
    scores = {t: float(np.mean(by_tag[t])) for t in tags if t in by_tag}
    out = {**scores, "overall": float(np.mean(list(scores.values()))) if scores else float("nan")}
    out["images"] = {t: len(by_tag[t]) for t in tags if t in by_tag}
    return out
