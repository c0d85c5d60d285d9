"""Executing edit operations (the ``<ins>`` / ``<refine>`` grammar) on a :class:`State`.

The painter never sees text: builders and the judge turn text into ops (``grammar.parse_ops``)
and ops into the next state here, so "what the instruction means" has one definition.
"""

from __future__ import annotations

import random
from dataclasses import replace

from .language import Add, Op, Remove, Replace, SetAttr, Swap
from .scene import COLORS, Obj, Placed, State, relation_holds


class EditError(ValueError):
    pass


def find(state: State, ref: Obj) -> list[int]:
    """Indices of the objects a reference can mean."""
    return [i for i, p in enumerate(state.objects) if p.obj.compatible(ref)]


def _one(state: State, ref: Obj) -> int:
    hits = find(state, ref)
    if not hits:
        raise EditError(f"no object matches 'the {ref}' in {state.spec().objects}")
    return hits[-1]                       # twins are interchangeable; take the most recent


def apply_op(state: State, op: Op, rng: random.Random | None = None) -> State:
    rng = rng or random.Random(0)
    objs = list(state.objects)
    if isinstance(op, Add):
        next_uid = max((p.uid for p in objs), default=-1) + 1
        for o in op.objects:
            if o.color is None or o.size is None:
                raise EditError(f"an added object needs a colour and a size, got {o}")
            free = State(tuple(objs)).free_cells()
            if op.relation:
                anchor = objs[_one(State(tuple(objs)), op.relation[1])]
                rel = op.relation[0]
                free = [c for c in free if relation_holds(Placed(o.shape, o.color, o.size, *c), rel, anchor)]
            if not free:
                raise EditError(f"no free cell for {o} ({op.relation or 'anywhere'})")
            objs.append(Placed(o.shape, o.color, o.size, *free[rng.randrange(len(free))], uid=next_uid))
            next_uid += 1
    elif isinstance(op, SetAttr):
        i = _one(state, op.ref)
        attr = "color" if op.value in COLORS else "size"
        objs[i] = replace(objs[i], **{attr: op.value})
    elif isinstance(op, Replace):
        i = _one(state, op.ref)
        p = objs[i]
        objs[i] = replace(p, shape=op.new.shape, color=op.new.color or p.color, size=op.new.size or p.size)
    elif isinstance(op, Remove):
        k = _one(state, op.ref)
        del objs[k]
        shift = lambda i: i - (i > k)
        rels = tuple((shift(a), r, shift(b)) for a, r, b in state.relations if k not in (a, b))
        return State(tuple(objs), rels)
    elif isinstance(op, Swap):
        i, j = _one(state, op.a), _one(state, op.b)
        if i == j:
            raise EditError(f"swap needs two different objects, both references name {objs[i]}")
        a, b = objs[i], objs[j]
        objs[i], objs[j] = replace(a, row=b.row, col=b.col), replace(b, row=a.row, col=a.col)
    else:
        raise EditError(f"unknown op {op!r}")
    return State(tuple(objs), state.relations)


def apply_ops(state: State, ops, rng: random.Random | None = None) -> State:
    for op in ops:
        state = apply_op(state, op, rng)
    return state
