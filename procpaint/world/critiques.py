"""Critiques: what the judge writes after INSPECT (image vs plan) or after reading a plan (plan vs
prompt), and the parser that reads them back.

    image, fine      the image matches the plan : it shows OBJECTS .
    image, wrong     the image does not match the plan . ERROR+
    plan, complete   the plan is consistent with the prompt and complete .
    plan, partial    the plan is consistent with the prompt . still to draw : OBJECTS .
    plan, wrong      the plan contradicts the prompt . ERROR+

    ERROR := REF should be COLOR|SIZE .            (wrong attribute)
           | REF should be a SHAPE .                (wrong shape)
           | OBJ is missing .                       (missing object)
           | there is an extra OBJ-WITHOUT-DET .    (extra object)
           | there are|is N OBJS but there should be M .   (wrong count)
           | REF should be REL REF .                (violated relation)
"""

from __future__ import annotations

from dataclasses import dataclass

from .language import (
    NUMBERS,
    REL_PHRASES,
    ParseError,
    _at_rel,
    _join,
    _pick,
    _read_attrs_noun,
    _Reader,
    _words,
    list_words,
    obj_words,
    read_list,
    read_obj,
    read_ref,
    read_rel,
    ref_words,
)
from .scene import COLORS, SHAPES, SIZES, Obj

WORDS = {"image", "matches", "plan", "it", "shows", "does", "not", "match", "consistent", "prompt",
         "complete", "still", "contradicts", "should", "be", "missing", "there", "extra", "are", "but",
         "is", "the", "a", "an", "and", "with", "to", "draw", "place"}
ERROR_KINDS = ("color", "size", "shape", "missing", "extra", "count", "relation")


@dataclass(frozen=True)
class Error:
    """One discrepancy. ``obj`` is what was drawn/planned (what was expected for ``missing``)."""

    kind: str                           # one of ERROR_KINDS
    obj: Obj
    value: str | None = None            # colour / size / shape / relation expected
    other: Obj | None = None            # relation anchor
    n: int = 0                          # count: how many there are
    m: int = 0                          # count: how many there should be


@dataclass(frozen=True)
class Critique:
    subject: str                        # "image" or "plan"
    ok: bool
    errors: tuple[Error, ...] = ()
    objects: tuple[Obj, ...] = ()       # image ok: what it shows; plan ok: what is still to draw
    relations: tuple[tuple[Obj, str, Obj], ...] = ()   # plan ok: relations still to place


def error_words(e: Error, rng=None) -> list[str]:
    if e.kind in ("color", "size"):
        return [*ref_words(e.obj), "should", "be", e.value, "."]
    if e.kind == "shape":
        return [*ref_words(e.obj), "should", "be", *obj_words(Obj(e.value)), "."]
    if e.kind == "missing":
        return [*obj_words(e.obj), "is", "missing", "."]
    if e.kind == "extra":
        return ["there", "is", "an", "extra", *obj_words(e.obj)[1:], "."]
    if e.kind == "count":
        return ["there", "is" if e.n == 1 else "are", *obj_words(e.obj, e.n, "one"), "but", "there",
                "should", "be", NUMBERS[e.m], "."]
    if e.kind == "relation":
        return [*ref_words(e.obj), "should", "be", *_pick(REL_PHRASES[e.value], rng).split(),
                *ref_words(e.other), "."]
    raise ValueError(f"unknown error kind {e.kind!r}")


def critique_text(c: Critique, rng=None) -> str:
    if c.subject == "image":
        if c.ok:
            words = ["the", "image", "matches", "the", "plan", ":", "it", "shows",
                     *list_words(c.objects, rng), "."]
        else:
            words = ["the", "image", "does", "not", "match", "the", "plan", "."]
    elif c.ok and not c.objects and not c.relations:
        words = ["the", "plan", "is", "consistent", "with", "the", "prompt", "and", "complete", "."]
    elif c.ok:
        words = ["the", "plan", "is", "consistent", "with", "the", "prompt", "."]
        if c.objects:
            words += ["still", "to", "draw", ":", *list_words(c.objects, rng), "."]
        if c.relations:
            words += ["still", "to", "place", ":"]
            for k, (a, rel, b) in enumerate(c.relations):
                words += (["and"] if k else []) + [*ref_words(a), *_pick(REL_PHRASES[rel], rng).split(),
                                                   *ref_words(b)]
            words.append(".")
    else:
        words = ["the", "plan", "contradicts", "the", "prompt", "."]
    for e in c.errors:
        words += error_words(e, rng)
    return _join(words)


def _read_error(r: _Reader) -> Error:
    if r.peek() == "there":
        r.take()
        verb = r.take("is", "are")
        if r.peek() == "an" and r.peek(1) == "extra":
            r.i += 2
            obj = _read_attrs_noun(r, plural=False)
            r.take(".")
            return Error("extra", obj)
        objs = read_obj(r)
        r.take("but"), r.take("there"), r.take("should"), r.take("be")
        m = NUMBERS.index(r.take(*NUMBERS))
        if (verb == "is") != (len(objs) == 1):
            r.fail("number agreement")
        r.take(".")
        return Error("count", objs[0], n=len(objs), m=m)
    if r.peek() != "the":                        # OBJ is missing
        objs = read_obj(r)
        r.take("is"), r.take("missing"), r.take(".")
        return Error("missing", objs[0])
    ref = read_ref(r)
    r.take("should"), r.take("be")
    if r.peek() in COLORS or r.peek() in SIZES:
        v = r.take()
        r.take(".")
        return Error("color" if v in COLORS else "size", ref, v)
    if _at_rel(r):
        rel = read_rel(r)
        other = read_ref(r)
        r.take(".")
        return Error("relation", ref, rel, other)
    r.take("a", "an")
    shape = r.take(*SHAPES)
    r.take(".")
    return Error("shape", ref, shape)


def parse_critique(text: str) -> Critique:
    r = _Reader(_words(text), text)
    head = r.w[:8]
    objects: tuple[Obj, ...] = ()
    relations: tuple = ()
    if head[:4] == ["the", "image", "matches", "the"]:
        r.i = 8
        objects = tuple(read_list(r))
        r.take(".")
        subject, ok = "image", True
    elif head[:4] == ["the", "image", "does", "not"]:
        r.i = 8
        subject, ok = "image", False
    elif head[:4] == ["the", "plan", "is", "consistent"]:
        r.i = 7
        subject, ok = "plan", True
        if r.peek() == "and":
            r.take(), r.take("complete"), r.take(".")
        else:
            r.take(".")
            if r.peek(2) == "draw":
                r.take("still"), r.take("to"), r.take("draw"), r.take(":")
                objects = tuple(read_list(r))
                r.take(".")
            if r.peek(2) == "place":
                r.take("still"), r.take("to"), r.take("place"), r.take(":")
                rels = [(read_ref(r), read_rel(r), read_ref(r))]
                while r.peek() == "and":
                    r.take()
                    rels.append((read_ref(r), read_rel(r), read_ref(r)))
                r.take(".")
                relations = tuple(rels)
            if not objects and not relations:
                r.fail("a partial plan critique says what is still to draw or place")
    elif head[:3] == ["the", "plan", "contradicts"]:
        r.i = 6
        subject, ok = "plan", False
    else:
        raise ParseError(f"not a critique: {text!r}")
    errors = []
    while not r.done():
        errors.append(_read_error(r))
    if not ok and not errors:
        r.fail("a negative critique lists at least one error")
    return Critique(subject, ok, tuple(errors), objects, relations)
