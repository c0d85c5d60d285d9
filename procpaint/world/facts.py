"""Facts of the painting world's knowledge benchmark: indirect names of colours, shapes, counts
and relations ("the color of a ripe banana" -> yellow), grouped in WISE's six categories.

Knowledge enters the model through text (docs: DESIGN.md, "Knowledge enters through text"):

- :data:`FACTS` lists every fact once (form, category, phrase, answer);
- :func:`statements` says each one in several phrasings; :func:`fact_corpus` is all of them, the
  text-only, cross-entropy-only training samples the builder writes (procpaint.datasets.records);
- :func:`split_facts` splits each (category, form) stratum of facts, seeded and deterministic, into
  ``trained`` facts (in the corpus and in training image prompts whose plans resolve them) and
  ``heldout`` facts (in the corpus only; the knowledge benchmark asks about these);
- :func:`prompt_for` writes the image prompt that names a fact's answer through the fact (the
  benchmark's and the builder's), :func:`asked_pattern` finds a fact asked that way in any text.

These are words of the world, so they live here: the tokenizer's vocabulary
(procpaint.datasets.store.dataset_vocabulary), the builder and the benchmark that asks with them
(procpaint.evaluation.knowledge) all read this module.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .language import NUMBERS
from .scene import COLORS, PLURALS, SHAPES, Obj, Spec

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


FORMS = ("color", "shape", "count", "space")
SPLITS = ("heldout", "trained")
HELDOUT_SHARE = 0.5         # share of each (category, form) stratum's facts held out by default


@dataclass(frozen=True)
class Fact:
    form: str                   # one of FORMS
    category: str               # one of CATEGORIES
    phrase: str                 # the tables' key ("a ripe banana"; a space template with {a}, {b})
    answer: object              # colour, shape, count (int) or relation

    @property
    def id(self) -> str:
        return f"{self.form}:{self.category}:{self.phrase}"


def _all_facts() -> tuple[Fact, ...]:
    out = [Fact(form, c, k, v) for form, tables in (("color", COLOR_FACTS), ("shape", SHAPE_FACTS),
                                                    ("count", COUNT_FACTS))
           for c in CATEGORIES for k, v in tables.get(c, {}).items()]
    out += [Fact("space", "space", k, v) for k, v in SPACE_FACTS.items()]
    return tuple(out)


FACTS = _all_facts()


@lru_cache(maxsize=16)
def split_facts(share: float = HELDOUT_SHARE, seed: int = 0) -> dict[str, tuple[Fact, ...]]:
    """{"heldout": facts, "trained": facts}: each (category, form) stratum ordered by a seeded hash of
    its facts' ids, the first ``round(n * share)`` held out (at least one held out and one trained
    where a stratum has two or more and 0 < share < 1; a lone fact is held out when share >= 0.5).
    A pure function of (share, seed): the builder and the benchmark agree without sharing state."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"held-out share of facts must be in [0, 1], got {share}")
    held, trained = [], []
    for c in CATEGORIES:
        for form in FORMS:
            group = sorted((f for f in FACTS if f.category == c and f.form == form),
                           key=lambda f: hashlib.blake2b(f"{seed}:{f.id}".encode(), digest_size=8).digest())
            n = len(group)
            k = int(n * share + 0.5)
            if 0.0 < share < 1.0 and n >= 2:
                k = min(max(k, 1), n - 1)
            held += group[:k]
            trained += group[k:]
    return {"heldout": tuple(held), "trained": tuple(trained)}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _stated_count(fact: Fact) -> str:
    """"there are seasons in a year" -> "there are four seasons in a year" (the number after the verb)."""
    m = re.match(r"^(there are|.*? has) (.*)$", fact.phrase)
    if m is None:
        raise ValueError(f"count fact {fact.phrase!r} has no 'has' / 'there are' to put its number after")
    return f"{m.group(1)} {NUMBERS[fact.answer]} {m.group(2)}"


def _shape_pairs(fact: Fact, k: int) -> list[tuple[str, str]]:
    """``k`` distinct (a, b) shape pairs for a space fact's statements, fixed by the fact."""
    key = hashlib.blake2b(fact.id.encode(), digest_size=4).digest()
    rng = np.random.default_rng(int.from_bytes(key, "little"))
    pairs = [(a, b) for a in SHAPES for b in SHAPES if a != b]
    return [pairs[i] for i in rng.permutation(len(pairs))[:k]]


def statements(fact: Fact) -> tuple[str, ...]:
    """The fact in several phrasings (each names the fact's phrase and its answer)."""
    p, a = fact.phrase, fact.answer
    if fact.form == "color":
        return (f"the color of {p} is {a}.", f"{a} is the color of {p}.",
                f"anything the color of {p} is {a}.")
    if fact.form == "shape":
        return (f"a shape {p} is {_article(a)} {a}.", f"the {a} is a shape {p}.",
                f"something {p} has the shape of {_article(a)} {a}.")
    if fact.form == "count":
        n = NUMBERS[a]
        return (f"{_stated_count(fact)}.", f"as many as {p} means {n}.", f"{n} is as many as {p}.")
    (a1, b1), (a2, b2) = _shape_pairs(fact, 2)
    return (f"if {p.format(a='first', b='second')}, then the first is {a} the second.",
            f"if {p.format(a=a1, b=b1)}, then the {a1} is {a} the {b1}.",
            f"when {p.format(a=a2, b=b2)}, the {a2} is {a} the {b2}.")


def fact_corpus(facts=None) -> list[tuple[Fact, str]]:
    """(fact, statement) for every statement of ``facts`` (default: all), in a fixed order."""
    return [(f, s) for f in (FACTS if facts is None else facts) for s in statements(f)]


def prompt_for(fact: Fact, rng: np.random.Generator) -> tuple[str, Spec]:
    """(prompt text without its "a photo of" prefix, resolved scene graph) naming ``fact``'s answer
    through the fact; the other attributes (shape, colour, the space fact's objects) are drawn."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    color = COLORS[rng.integers(len(COLORS))]
    if fact.form == "color":
        return f"{_article(shape)} {shape} the color of {fact.phrase}", Spec((Obj(shape, fact.answer),))
    if fact.form == "shape":
        return f"{_article(color)} {color} shape {fact.phrase}", Spec((Obj(fact.answer, color),))
    if fact.form == "count":
        return (f"as many {color} {PLURALS[shape]} as {fact.phrase}",
                Spec((Obj(shape, color),) * fact.answer))
    a, b = (SHAPES[i] for i in rng.permutation(len(SHAPES))[:2])
    ca, cb = (COLORS[i] for i in rng.permutation(len(COLORS))[:2])
    text = f"{_article(ca)} {ca} {a} and {_article(cb)} {cb} {b}. " + fact.phrase.format(a=a, b=b) + "."
    return text, Spec((Obj(a, ca), Obj(b, cb)), ((0, fact.answer, 1),))


def asked_pattern(fact: Fact) -> re.Pattern:
    """Where a text asks for ``fact`` the way :func:`prompt_for` does ("the color of a ripe banana",
    "shape like a wheel", "as there are seasons in a year", a space template with any two shapes)."""
    if fact.form == "space":
        shapes = "(?:" + "|".join(SHAPES) + ")"
        body = re.escape(fact.phrase).replace(re.escape("{a}"), shapes).replace(re.escape("{b}"), shapes)
    else:
        lead = {"color": "the color of ", "shape": "shape ", "count": "as "}[fact.form]
        body = re.escape(lead + fact.phrase)
    return re.compile(r"(?<![a-z])" + body + r"(?![a-z])")


def vocabulary(metadata: list[dict] | None = None) -> list[str]:
    """Every word the knowledge prompts and the fact corpus can use (or those of ``metadata``), sorted."""
    texts = [m["prompt"] for m in metadata] if metadata is not None else _all_texts()
    return sorted({w for t in texts for w in re.findall(r"[a-z]+|[.,:]", t.lower())})


def _all_texts() -> list[str]:
    words = [*COLOR_FACTS.values(), *SHAPE_FACTS.values(), *COUNT_FACTS.values()]
    texts = [k for table in words for k in table] + list(SPACE_FACTS)
    texts += [" ".join((*COLORS, *SHAPES, *PLURALS.values(), *NUMBERS)),
              "a an photo of the color shape as many and . where is"]
    texts += [s for _, s in fact_corpus()]
    return [t.replace("{a}", "").replace("{b}", "") for t in texts]
