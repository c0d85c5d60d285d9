"""Facts of the painting world's knowledge benchmark: indirect names of colours, shapes, counts
and relations ("the color of a ripe banana" -> yellow), grouped in WISE's six categories.

These are words of the world, so they live here: the tokenizer's vocabulary
(procpaint.datasets.store.dataset_vocabulary) and the benchmark that asks with them
(procpaint.evaluation.knowledge) both read this module.
"""

from __future__ import annotations

import re

from .language import NUMBERS
from .scene import COLORS, PLURALS, SHAPES

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
