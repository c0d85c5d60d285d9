"""Seeded prompt scene graphs in GenEval's categories, plus a held-out split.

Tags follow GenEval: ``single_object``, ``two_object``, ``counting`` (2-4), ``colors``,
``position``, ``color_attr``; ``composite`` adds 3-4 objects with a relation so trajectories get
long enough to exercise 4-5 rounds. Which prompts are held out for evaluation is a pure function of
the prompt's canonical text (a hash bucket), so training and evaluation never share a prompt
whatever seeds they use.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .language import prompt_text
from .scene import COLORS, RELATIONS, SHAPES, SIZES, Obj, Spec

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr", "composite")


def _choice(rng: np.random.Generator, seq, k: int = 1, replace: bool = False):
    idx = rng.choice(len(seq), size=k, replace=replace)
    return [seq[i] for i in idx]


def _obj(rng, color: bool, size_p: float = 0.25) -> Obj:
    return Obj(_choice(rng, SHAPES)[0], _choice(rng, COLORS)[0] if color else None,
               _choice(rng, SIZES)[0] if rng.random() < size_p else None)


def sample_prompt(rng: np.random.Generator, tag: str) -> Spec:
    if tag == "single_object":
        return Spec((_obj(rng, color=False),))
    if tag == "colors":
        return Spec((_obj(rng, color=True),))
    if tag == "counting":
        o = _obj(rng, color=rng.random() < 0.5)
        return Spec((o,) * int(rng.integers(2, 5)))
    if tag in ("two_object", "color_attr", "position"):
        s1, s2 = _choice(rng, SHAPES, 2)
        c = _choice(rng, COLORS, 2) if tag != "two_object" or rng.random() < 0.3 else [None, None]
        objs = (Obj(s1, c[0]), Obj(s2, c[1]))
        rels = ((0, _choice(rng, RELATIONS)[0], 1),) if tag == "position" else ()
        return Spec(objs, rels)
    if tag == "composite":
        shapes = _choice(rng, SHAPES, 3)
        a, b = Obj(shapes[0], _choice(rng, COLORS)[0]), Obj(shapes[1], _choice(rng, COLORS)[0])
        rest = _obj(rng, color=rng.random() < 0.6)
        rest = Obj(shapes[2], rest.color, rest.size)
        n = int(rng.integers(1, 3))
        return Spec((a, b, *(rest,) * n), ((0, _choice(rng, RELATIONS)[0], 1),))
    raise ValueError(f"unknown prompt tag {tag!r}; known: {TAGS}")


def prompt_key(spec: Spec) -> str:
    """Canonical text of a prompt (phrasing-independent)."""
    return prompt_text(spec.canonical(), None)


def is_heldout(spec: Spec, fraction: float) -> bool:
    """Stable hash bucket of the canonical prompt: the same prompts are held out everywhere."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(prompt_key(spec).encode(), digest_size=8).digest(), "little")
    return (h % 1_000_000) < fraction * 1_000_000


def sample_split_prompt(rng: np.random.Generator, tag: str, fraction: float, heldout: bool,
                        tries: int = 1000) -> Spec:
    """A prompt of ``tag`` on the requested side of the held-out split."""
    for _ in range(tries):
        spec = sample_prompt(rng, tag)
        if is_heldout(spec, fraction) == heldout:
            return spec
    raise RuntimeError(f"no {'held-out' if heldout else 'training'} prompt of tag {tag!r} in {tries} tries "
                       f"(held-out fraction {fraction})")


def heldout_prompts(n: int, seed: int = 0, fraction: float = 0.05, tags=TAGS) -> list[tuple[str, Spec]]:
    """``n`` (tag, spec) evaluation prompts disjoint from any training build with this ``fraction``."""
    rng = np.random.default_rng([seed, 7919])
    return [(tags[k % len(tags)], sample_split_prompt(rng, tags[k % len(tags)], fraction, True))
            for k in range(n)]
