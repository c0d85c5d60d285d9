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

The words of these prompts are outside the world's training grammar: :func:`vocabulary` lists them
so a tokenizer can be extended; a model trained only on the world's grammar has never seen them.
"""

from __future__ import annotations

import re

import numpy as np

from ..world.critique_grammar import critique_text
from ..world.detect import Detector
from ..world.grammar import NUMBERS
from ..world.judge import compare_state
from ..world.scene import COLORS, PLURALS, SHAPES, Obj, Spec, satisfies
from .geneval import spec_from_json, spec_to_json

CATEGORIES = ("cultural", "time", "space", "biology", "physics", "chemistry")
WISE_SHARES = {"cultural": 400, "time": 167, "space": 133, "biology": 100, "physics": 100, "chemistry": 100}

# "the color of <fact>" -> colour
COLOR_FACTS = {
    "cultural": {"a ripe banana": "yellow", "fresh grass": "green", "snow": "white", "coal": "black",
                 "a fire truck": "red", "milk chocolate": "brown", "a pumpkin": "orange",
                 "a flamingo": "pink",
                 "an eggplant": "purple", "a stop sign": "red", "a crow": "black", "tree bark": "brown",
                 "a lemon": "yellow", "bubble gum": "pink", "lavender flowers": "purple",
                 "ripe blueberries": "blue", "a tangerine": "orange", "fresh milk": "white"},
    "time": {"leaves in autumn": "orange", "leaves in summer": "green", "the sky at midnight": "black",
             "a banana before it ripens": "green", "a banana long after it ripens": "brown",
             "cherry blossoms in spring": "pink", "the sky at noon on a clear day": "blue",
             "fields after a winter snowfall": "white", "the sun at sunset": "orange",
             "toast left in the toaster far too long": "black"},
    "biology": {"chlorophyll": "green", "blood": "red", "the fur of a polar bear": "white",
                "the feathers of a raven": "black", "the fur of an orangutan": "orange",
                "the feathers of a canary": "yellow", "the feathers of a flamingo": "pink"},
    "physics": {"the daytime sky": "blue", "the longest visible wavelength of light": "red",
                "the shortest visible wavelength of light": "purple",
                "a surface that reflects all visible light": "white",
                "a surface that absorbs all visible light": "black",
                "red and yellow paint mixed together": "orange",
                "blue and yellow paint mixed together": "green",
                "red and blue paint mixed together": "purple", "red and white paint mixed together": "pink"},
    "chemistry": {"copper sulfate crystals": "blue", "rust": "brown", "sulfur": "yellow", "charcoal": "black",
                  "litmus paper dipped in acid": "red", "litmus paper dipped in a base": "blue",
                  "table salt": "white", "a potassium flame": "purple", "a strontium flame": "red",
                  "the patina on old copper": "green"},
}
# "a <color> shape <fact>" -> shape
SHAPE_FACTS = {
    "cultural": {"like a wheel": "circle", "like a coin": "circle", "like a slice of pizza": "triangle",
                 "like a yield sign": "triangle", "like a chessboard": "square",
                 "like a sheriff badge": "star",
                 "like a plus sign": "cross", "like the suit of diamonds on playing cards": "diamond",
                 "like a kite": "diamond", "like a sail": "triangle"},
    "time": {"like the full moon": "circle", "like a clock face": "circle"},
    "biology": {"like a starfish": "star"},
    "physics": {"with no corners": "circle", "with three corners": "triangle", "with five points": "star",
                "like a square turned by forty five degrees": "diamond",
                "like two bars crossing at right angles": "cross"},
}
# "as many <plural> as <fact>" -> count
COUNT_FACTS = {
    "cultural": {"a bicycle has wheels": 2, "a tricycle has wheels": 3, "a chair has legs": 4,
                 "there are shoes in a pair": 2, "there are musketeers in the novel": 3},
    "time": {"there are seasons in a year": 4, "there are days in a weekend": 2,
             "there are months in a quarter of a year": 3, "there are meals in a day": 3},
    "biology": {"a bird has legs": 2, "a dog has legs": 4, "a human has eyes": 2, "an octopus has hearts": 3,
                "a human heart has chambers": 4, "a cow has stomach chambers": 4},
    "physics": {"a magnet has poles": 2, "a triangle has corners": 3, "a square has corners": 4,
                "water has everyday states of matter": 3},
    "chemistry": {"a water molecule has hydrogen atoms": 2, "a water molecule has atoms": 3,
                  "a carbon dioxide molecule has atoms": 3, "a methane molecule has hydrogen atoms": 4,
                  "an oxygen molecule has atoms": 2},
}
# Indirect layouts: {a} and {b} are the two objects' shape names.
SPACE_FACTS = {
    "the {a} is where the sky is and the {b} is where the ground is": "above",
    "the {a} is where the roots of a tree are and the {b} is where its leaves are": "below",
    "the {a} is east of the {b}, as on a map": "right of",
    "the {a} is west of the {b}, as on a map": "left of",
    "the {a} is north of the {b}, as on a map": "above",
    "the {a} is south of the {b}, as on a map": "below",
    "the {a} comes first and the {b} second, as words in an english sentence": "left of",
    "the {a} comes after the {b}, as words in an english sentence": "right of",
    "the {a} is where the roof of a house is and the {b} is where its cellar is": "above",
}


def _facts_forms(category: str) -> list[str]:
    if category == "space":
        return ["space"]
    return [f for f, table in (("color", COLOR_FACTS), ("shape", SHAPE_FACTS), ("count", COUNT_FACTS))
            if table.get(category)]


def make_prompt(rng: np.random.Generator, category: str) -> dict:
    """One metadata line: category, form, prompt text, resolved scene graph."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown knowledge category {category!r}; known: {CATEGORIES}")
    forms = _facts_forms(category)
    form = forms[rng.integers(len(forms))]
    pick = lambda table: sorted(table.items())[rng.integers(len(table))]    # noqa: E731
    shape = SHAPES[rng.integers(len(SHAPES))]
    color = COLORS[rng.integers(len(COLORS))]
    if form == "color":
        fact, color = pick(COLOR_FACTS[category])
        art = "an" if shape[0] in "aeiou" else "a"
        text, spec = f"{art} {shape} the color of {fact}", Spec((Obj(shape, color),))
    elif form == "shape":
        fact, shape = pick(SHAPE_FACTS[category])
        text, spec = f"a {color} shape {fact}", Spec((Obj(shape, color),))
    elif form == "count":
        fact, n = pick(COUNT_FACTS[category])
        text, spec = f"as many {color} {PLURALS[shape]} as {fact}", Spec((Obj(shape, color),) * n)
    else:
        fact, rel = pick(SPACE_FACTS)
        a, b = (SHAPES[i] for i in rng.permutation(len(SHAPES))[:2])
        ca, cb = (COLORS[i] for i in rng.permutation(len(COLORS))[:2])
        text = f"a {ca} {a} and a {cb} {b}. " + fact.format(a=a, b=b) + "."
        spec = Spec((Obj(a, ca), Obj(b, cb)), ((0, rel, 1),))
    return {"tag": category, "category": category, "form": form, "prompt": f"a photo of {text}",
            "spec": spec_to_json(spec), **_clauses(spec)}


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


def generate_metadata(n: int = 500, seed: int = 0, shares: dict[str, int] | None = None) -> list[dict]:
    """``n`` knowledge prompts split over categories by ``shares`` (default WISE's), seeded."""
    shares = shares or WISE_SHARES
    total = sum(shares.values())
    counts = {c: int(round(n * shares.get(c, 0) / total)) for c in CATEGORIES}
    out = []
    for k, c in enumerate(CATEGORIES):
        rng = np.random.default_rng([seed, 6151, k])
        out += [make_prompt(rng, c) for _ in range(counts[c])]
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


def vocabulary(metadata: list[dict] | None = None) -> list[str]:
    """Every word the knowledge prompts can use (or those of ``metadata``), sorted."""
    texts = [m["prompt"] for m in metadata] if metadata is not None else _all_texts()
    return sorted({w for t in texts for w in re.findall(r"[a-z]+|[.,:]", t.lower())})


def _all_texts() -> list[str]:
    words = [*COLOR_FACTS.values(), *SHAPE_FACTS.values(), *COUNT_FACTS.values()]
    texts = [k for table in words for k in table] + list(SPACE_FACTS)
    texts += [" ".join((*COLORS, *SHAPES, *PLURALS.values(), *NUMBERS)),
              "a an photo of the color shape as many and . where is"]
    return [t.replace("{a}", "").replace("{b}", "") for t in texts]
