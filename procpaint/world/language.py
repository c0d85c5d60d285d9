"""The text grammar of the painting world: generation, parsing and vocabulary.

Every text is generated from a structure (a :class:`Spec`, a list of edit :data:`Op`, or a
:class:`Critique`) with a seeded choice among phrasings, and :func:`parse_spec`, :func:`parse_ops`
and :func:`parse_critique` recover that structure exactly (round trip, property-tested). Passing
``rng=None`` picks the first (canonical) phrasing. Texts are lower case; words are separated by
spaces and the punctuation ``, . :`` is its own word, so a WordLevel tokenizer over
:func:`vocabulary` covers every text.

    prompt      := PREFIX objects                     | PREFIX obj REL obj
                 | PREFIX objects "." (ref "is" REL ref ".")+
    plan        := <ins> ops </ins> <des> objects ["." relations] </des>
    ops         := op ("then" op)*     op := add | set | replace | remove | swap
    critique    := see :func:`critique_text`
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .scene import COLORS, INVERSE, PLURALS, RELATIONS, SHAPES, SIZES, Obj, Spec

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PREFIXES = ("a photo of", "an image of", "a picture of", "a painting of")
REL_PHRASES = {"left of": ("left of", "to the left of"), "right of": ("right of", "to the right of"),
               "above": ("above", "over"), "below": ("below", "under")}
SINGULAR = {p: s for s, p in PLURALS.items()}
_REL_WORDS = {tuple(p.split()): r for r, ps in REL_PHRASES.items() for p in ps}


class ParseError(ValueError):
    pass


def _pick(options, rng):
    return options[0] if rng is None else options[rng.randrange(len(options))]


def _words(text: str) -> list[str]:
    return re.findall(r"<[^>]+>|[a-z]+|[.,:]", text.lower())


def _join(words: list[str]) -> str:
    # No space before punctuation; plain replaces (same result as re.sub(r" ([.,:])", ...), 3x faster).
    return " ".join(words).replace(" .", ".").replace(" ,", ",").replace(" :", ":")


# ---------------------------------------------------------------- objects, lists, references

def _attrs(o: Obj) -> list[str]:
    return [w for w in (o.size, o.color) if w]


def obj_words(o: Obj, n: int = 1, det: str = "a") -> list[str]:
    body = [*_attrs(o), o.shape if n == 1 else PLURALS[o.shape]]
    if n != 1:
        return [NUMBERS[n], *body]
    if det == "a" and body[0][0] in "aeiou":
        det = "an"
    return [det, *body]


def ref_words(o: Obj) -> list[str]:
    return ["the", *_attrs(o), o.shape]


def list_words(objs, rng=None) -> list[str]:
    groups: list[list] = []                      # consecutive identical objects -> one count phrase
    for o in objs:
        if groups and groups[-1][0] == o:
            groups[-1][1] += 1
        else:
            groups.append([o, 1])
    phrases = [obj_words(o, n, _pick(("a", "one"), rng) if n == 1 else "a") for o, n in groups]
    out: list[str] = []
    for k, p in enumerate(phrases):
        if k:
            out.append("and" if k == len(phrases) - 1 else ",")
        out += p
    return out


class _Reader:
    def __init__(self, words: list[str], text: str):
        self.w, self.i, self.text = words, 0, text

    def peek(self, k: int = 0) -> str | None:
        return self.w[self.i + k] if self.i + k < len(self.w) else None

    def take(self, *expected: str) -> str:
        w = self.peek()
        if w is None or (expected and w not in expected):
            raise ParseError(f"expected {expected or 'a word'} at word {self.i} in {self.text!r}, got {w!r}")
        self.i += 1
        return w

    def done(self) -> bool:
        return self.i >= len(self.w)

    def fail(self, what: str):
        raise ParseError(f"{what} at word {self.i} in {self.text!r}")


def _read_attrs_noun(r: _Reader, plural: bool) -> Obj:
    size = r.take() if r.peek() in SIZES else None
    color = r.take() if r.peek() in COLORS else None
    noun = r.take()
    shape = SINGULAR.get(noun) if plural else (noun if noun in SHAPES else None)
    if shape is None:
        r.fail(f"unknown {'plural ' if plural else ''}shape {noun!r}")
    return Obj(shape, color, size)


def read_obj(r: _Reader) -> list[Obj]:
    det = r.take()
    if det in ("a", "an", "one"):
        return [_read_attrs_noun(r, plural=False)]
    if det in NUMBERS[2:]:
        return [_read_attrs_noun(r, plural=True)] * NUMBERS.index(det)
    r.fail(f"expected a determiner or number, got {det!r}")


def read_ref(r: _Reader) -> Obj:
    r.take("the")
    return _read_attrs_noun(r, plural=False)


def read_list(r: _Reader) -> list[Obj]:
    objs = read_obj(r)
    while r.peek() in (",", "and") and r.peek(1) in ("a", "an", "one", *NUMBERS[2:]):
        r.take()
        objs += read_obj(r)
    return objs


def read_rel(r: _Reader) -> str:
    for n in (4, 3, 2, 1):
        key = tuple(r.w[r.i: r.i + n])
        if key in _REL_WORDS:
            r.i += n
            return _REL_WORDS[key]
    r.fail("expected a relation")


def _at_rel(r: _Reader) -> bool:
    return any(tuple(r.w[r.i: r.i + n]) in _REL_WORDS for n in (1, 2, 3, 4))


def _index_of(objs, ref: Obj, r: _Reader) -> int:
    hits = [k for k, o in enumerate(objs) if o == ref]
    if len(hits) != 1:
        r.fail(f"reference {ref} must name exactly one object, names {len(hits)}")
    return hits[0]


# ---------------------------------------------------------------- prompts and descriptions

def relation_words(objs, rel, rng=None) -> list[str]:
    a, r, b = rel
    return [*ref_words(objs[a]), "is", *_pick(REL_PHRASES[r], rng).split(), *ref_words(objs[b]), "."]


def spec_words(spec: Spec, rng=None, inline: bool = True) -> list[str]:
    objs = spec.objects
    if inline and len(objs) == 2 and len(spec.relations) == 1:
        a, r, b = spec.relations[0]
        if a == 1:                               # keep the object order of the spec
            a, r, b = 0, INVERSE[r], 1
        return [*obj_words(objs[a]), *_pick(REL_PHRASES[r], rng).split(), *obj_words(objs[b])]
    out = list_words(objs, rng)
    if spec.relations:
        out.append(".")
        for rel in spec.relations:
            out += relation_words(objs, rel, rng)
        out.pop()                                # the closing "." belongs to the caller
    return out


def prompt_text(spec: Spec, rng=None) -> str:
    return _join([*_pick(PREFIXES, rng).split(), *spec_words(spec, rng)])


def read_spec(r: _Reader, stop: str | None = None) -> Spec:
    objs = read_obj(r)
    if _at_rel(r):                               # inline: obj REL obj
        rel = read_rel(r)
        other = read_obj(r)
        if len(objs) != 1 or len(other) != 1:
            r.fail("an inline relation joins two single objects")
        return Spec((objs[0], other[0]), ((0, rel, 1),))
    while r.peek() in (",", "and") and r.peek(1) in ("a", "an", "one", *NUMBERS[2:]):
        r.take()
        objs += read_obj(r)
    rels = []
    while r.peek() == "." and r.peek(1) == "the":
        r.take(".")
        a = _index_of(objs, read_ref(r), r)
        r.take("is")
        rel = read_rel(r)
        b = _index_of(objs, read_ref(r), r)
        rels.append((a, rel, b))
    return Spec(tuple(objs), tuple(rels))


def parse_prompt(text: str) -> Spec:
    r = _Reader(_words(text), text)
    for p in PREFIXES:
        if r.w[: len(p.split())] == p.split():
            r.i = len(p.split())
            break
    else:
        r.fail("a prompt starts with one of " + ", ".join(PREFIXES))
    spec = read_spec(r)
    r.take(".") if r.peek() == "." else None
    if not r.done():
        r.fail("trailing words")
    return spec


# ---------------------------------------------------------------- edit operations

@dataclass(frozen=True)
class Add:
    objects: tuple[Obj, ...]
    relation: tuple[str, Obj] | None = None      # (relation, anchor reference); one object only


@dataclass(frozen=True)
class SetAttr:
    ref: Obj
    value: str                                   # a colour or a size


@dataclass(frozen=True)
class Replace:
    ref: Obj
    new: Obj


@dataclass(frozen=True)
class Remove:
    ref: Obj


@dataclass(frozen=True)
class Swap:
    a: Obj
    b: Obj


Op = Add | SetAttr | Replace | Remove | Swap
OP_NAMES = {Add: "add", SetAttr: "refine", Replace: "replace", Remove: "remove", Swap: "swap"}


def op_words(op: Op, rng=None) -> list[str]:
    if isinstance(op, Add):
        out = [_pick(("draw", "add", "paint"), rng), *list_words(op.objects, rng)]
        if op.relation:
            out += [*_pick(REL_PHRASES[op.relation[0]], rng).split(), *ref_words(op.relation[1])]
        return out
    if isinstance(op, SetAttr):
        attr = "color" if op.value in COLORS else "size"
        if _pick((0, 1), rng):
            return ["change", "the", attr, "of", *ref_words(op.ref), "to", op.value]
        return ["make", *ref_words(op.ref), op.value]
    if isinstance(op, Replace):
        if _pick((0, 1), rng):
            return ["turn", *ref_words(op.ref), "into", *obj_words(op.new)]
        return ["replace", *ref_words(op.ref), "with", *obj_words(op.new)]
    if isinstance(op, Remove):
        return [_pick(("remove", "erase"), rng), *ref_words(op.ref)]
    return [_pick(("swap", "exchange"), rng), *ref_words(op.a), "and", *ref_words(op.b)]


def ops_text(ops, rng=None) -> str:
    out: list[str] = []
    for k, op in enumerate(ops):
        out += (["then"] if k else []) + op_words(op, rng)
    return _join(out)


def read_op(r: _Reader) -> Op:
    verb = r.take()
    if verb in ("draw", "add", "paint"):
        objs = read_list(r)
        if _at_rel(r):
            rel = read_rel(r)
            if len(objs) != 1:
                r.fail("an anchored add places exactly one object")
            return Add(tuple(objs), (rel, read_ref(r)))
        return Add(tuple(objs))
    if verb == "make":
        ref = read_ref(r)
        return SetAttr(ref, r.take(*COLORS, *SIZES))
    if verb == "change":
        r.take("the")
        attr = r.take("color", "size")
        r.take("of")
        ref = read_ref(r)
        r.take("to")
        return SetAttr(ref, r.take(*(COLORS if attr == "color" else SIZES)))
    if verb in ("replace", "turn"):
        ref = read_ref(r)
        r.take("with" if verb == "replace" else "into")
        new = read_obj(r)
        if len(new) != 1:
            r.fail("replace takes one object")
        return Replace(ref, new[0])
    if verb in ("remove", "erase"):
        return Remove(read_ref(r))
    if verb in ("swap", "exchange"):
        a = read_ref(r)
        r.take("and")
        return Swap(a, read_ref(r))
    r.fail(f"unknown verb {verb!r}")


def parse_ops(text: str) -> tuple[Op, ...]:
    r = _Reader(_words(text), text)
    ops = [read_op(r)]
    while r.peek() == "then":
        r.take()
        ops.append(read_op(r))
    if not r.done():
        r.fail("trailing words")
    return tuple(ops)


# ---------------------------------------------------------------- plans

def describe(spec: Spec, rng=None) -> str:
    """The global description (``<des>`` body) of a scene."""
    return _join(spec_words(spec, rng, inline=False)) if spec.objects else "an empty canvas"


def plan_text(ops, state_spec: Spec, rng=None) -> str:
    des = describe(state_spec, rng)
    return f"<ins>{ops_text(ops, rng)}</ins><des>{des}</des>"


_PLAN_RE = re.compile(r"^\s*<ins>(.*?)</ins>\s*<des>(.*?)</des>\s*$", re.S)


def parse_plan(text: str) -> tuple[tuple[Op, ...], Spec]:
    m = _PLAN_RE.match(text)
    if not m:
        raise ParseError(f"a plan is <ins>...</ins><des>...</des>, got {text!r}")
    des = m.group(2).strip()
    if des == "an empty canvas":
        return parse_ops(m.group(1)), Spec()
    r = _Reader(_words(des), des)
    spec = read_spec(r)
    if not r.done():
        r.fail("trailing words in the description")
    return parse_ops(m.group(1)), spec


def refine_text(ops, rng=None) -> str:
    return f"<refine>{ops_text(ops, rng)}</refine>"


def parse_refine(text: str) -> tuple[Op, ...]:
    m = re.match(r"^\s*<refine>(.*?)</refine>\s*$", text, re.S)
    if not m:
        raise ParseError(f"a refine instruction is <refine>...</refine>, got {text!r}")
    return parse_ops(m.group(1))


def vocabulary() -> list[str]:
    """Every word (and punctuation mark) the grammar can emit, sorted; tags are special tokens."""
    from . import critiques  # the critique templates live beside their parser

    words = {*COLORS, *SHAPES, *PLURALS.values(), *SIZES, *NUMBERS, ",", ".", ":",
             "a", "an", "the", "is", "then", "and", "of", "to", "with", "into", "empty", "canvas",
             "draw", "add", "paint", "change", "color", "size", "make", "replace", "turn", "remove",
             "erase", "swap", "exchange"}
    for p in PREFIXES:
        words.update(p.split())
    for ps in REL_PHRASES.values():
        for p in ps:
            words.update(p.split())
    words.update(critiques.WORDS)
    assert set(RELATIONS) <= set(REL_PHRASES)
    return sorted(words)
