"""Scene graphs of the painting world.

Two levels, because text under-specifies images:

* :class:`Spec` is what a text says: objects whose colour or size may be left open (``None``),
  plus relations between objects. Every text of the grammar parses to a ``Spec``.
* :class:`State` is what an image shows: fully specified objects placed in the cells of a
  ``GRID x GRID`` layout. ``State.spec()`` is its complete description.

Relations have one definition, GenEval's relative-position rule (:func:`relative_position`),
applied to the objects' nominal boxes in their layout cells (:func:`cell_box`). On the grid it reads:
``a left of b`` iff ``a``'s column is smaller *and* the column offset is at least the row offset,
so a steep diagonal (one column, two rows apart) is only ``above`` / ``below`` and a 45-degree
diagonal is both. Rendered jitter stays well inside the rule's margins, so GenEval's scorer on the
rendered (and detected) boxes agrees with the world (tests/world/test_position.py).
Matching a state against a spec is exact bookkeeping, which is what makes the judge exact.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import cache

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "diamond": "diamonds", "cross": "crosses"}
# GenEval's ten colours (RGB, 0-255); picked far from each other and from the background.
PALETTE = {
    "red": (214, 30, 30), "orange": (250, 140, 10), "yellow": (245, 225, 20), "green": (30, 150, 50),
    "blue": (35, 70, 215), "purple": (135, 45, 175), "pink": (250, 140, 195), "brown": (115, 65, 25),
    "black": (15, 15, 15), "white": (250, 250, 250),
}
COLORS = tuple(PALETTE)
BACKGROUND = (150, 150, 150)       # neutral mid grey: black and white both stand out
SIZES = ("small", "large")
RELATIONS = ("left of", "right of", "above", "below")
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
GRID = 3                            # layout cells per side; at most GRID*GRID objects
MAX_OBJECTS = GRID * GRID
SIZE_FRACTION = {"small": 0.25, "large": 0.36}    # half-extent as a fraction of the cell size
# Layout "canonical": cells in this order of preference (centre, its row, its column, corners), the
# first assignment that satisfies the relations; a prompt then has one layout instead of up to 9P4.
CANONICAL_CELLS = ((1, 1), (1, 0), (1, 2), (0, 1), (2, 1), (0, 0), (0, 2), (2, 0), (2, 2))
LAYOUTS = ("random", "canonical")
POSITION_THRESHOLD = 0.1            # GenEval: shrink the centre offset by 0.1 x (sum of box extents)


@dataclass(frozen=True, order=True)
class Obj:
    """One object as a text describes it; ``None`` means the text leaves it open."""

    shape: str
    color: str | None = None
    size: str | None = None

    def compatible(self, other: Obj) -> bool:
        """Could ``self`` (a full object) be what ``other`` (a possibly partial one) describes?"""
        return (self.shape == other.shape and other.color in (None, self.color)
                and other.size in (None, self.size))


Relation = tuple[int, str, int]     # (subject index, relation, object index)


@dataclass(frozen=True)
class Spec:
    objects: tuple[Obj, ...] = ()
    relations: tuple[Relation, ...] = ()

    def canonical(self) -> Spec:
        """Relations written as left of / above only, sorted (text may use either direction)."""
        rels = set()
        for a, r, b in self.relations:
            rels.add((b, INVERSE[r], a) if r in ("right of", "below") else (a, r, b))
        return Spec(self.objects, tuple(sorted(rels)))

    def __eq__(self, other) -> bool:
        if not isinstance(other, Spec):
            return NotImplemented
        a, b = self.canonical(), other.canonical()
        return a.objects == b.objects and a.relations == b.relations

    def __hash__(self) -> int:
        c = self.canonical()
        return hash((c.objects, c.relations))


@dataclass(frozen=True)
class Placed:
    """A fully specified object in layout cell (row, col)."""

    shape: str
    color: str
    size: str
    row: int
    col: int
    uid: int = field(default=0, compare=False)   # stable identity across steps (render jitter)

    @property
    def obj(self) -> Obj:
        return Obj(self.shape, self.color, self.size)


def relative_position(a: tuple, b: tuple, threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of box ``a`` to box ``b`` (x1, y1, x2, y2; y down), GenEval's rule.

    The centre offset is shrunk per axis by ``threshold`` x (sum of the two boxes' extents on that
    axis), then divided by the unshrunk offset's length; a component beyond 0.5 is a relation.
    Plain floats (no numpy): the world calls this in its inner loops.
    """
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    ox, oy = (ax0 + ax1) / 2 - (bx0 + bx1) / 2, (ay0 + ay1) / 2 - (by0 + by1) / 2
    sx = abs(ax1 - ax0) + abs(bx1 - bx0)
    sy = abs(ay1 - ay0) + abs(by1 - by0)
    rx = math.copysign(max(abs(ox) - threshold * sx, 0.0), ox)
    ry = math.copysign(max(abs(oy) - threshold * sy, 0.0), oy)
    if abs(rx) < 1e-3 and abs(ry) < 1e-3:
        return set()
    norm = math.hypot(ox, oy)
    dx, dy = rx / norm, ry / norm
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def cell_box(row: int, col: int, size: str) -> tuple[float, float, float, float]:
    """Nominal box (x1, y1, x2, y2) in cell units of an object of ``size`` centred in its cell."""
    h = SIZE_FRACTION[size]
    return (col + 0.5 - h, row + 0.5 - h, col + 0.5 + h, row + 0.5 + h)


@cache
def _cell_relations(ra: int, ca: int, sa: str, rb: int, cb: int, sb: str) -> frozenset[str]:
    return frozenset(relative_position(cell_box(ra, ca, sa), cell_box(rb, cb, sb)))


def relations_between(a: Placed, b: Placed) -> frozenset[str]:
    """Every relation of ``a`` to ``b`` (GenEval's rule on the nominal cell boxes)."""
    return _cell_relations(a.row, a.col, a.size, b.row, b.col, b.size)


def relation_holds(a: Placed, rel: str, b: Placed) -> bool:
    """``a rel b`` -- the world's only definition of a relation (see the module docstring)."""
    return rel in _cell_relations(a.row, a.col, a.size, b.row, b.col, b.size)


@dataclass(frozen=True)
class State:
    """What an image shows: placed objects plus the relations a description of it mentions."""

    objects: tuple[Placed, ...] = ()
    relations: tuple[Relation, ...] = ()

    def spec(self) -> Spec:
        return Spec(tuple(p.obj for p in self.objects), self.relations)

    def free_cells(self) -> list[tuple[int, int]]:
        used = {(p.row, p.col) for p in self.objects}
        return [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) not in used]


def match(full: tuple[Obj, ...], partial: tuple[Obj, ...]) -> list[int] | None:
    """Injective assignment ``full[i] -> partial[m[i]]`` with compatible attributes, or None.

    Most specific partial objects are served first, which is exact for this attribute lattice
    (a partial object's candidates are a superset of any more specific one's).
    """
    order = sorted(range(len(partial)), key=lambda j: -((partial[j].color is not None)
                                                           + (partial[j].size is not None)))
    taken: dict[int, int] = {}
    for j in order:
        for i, f in enumerate(full):
            if i not in taken and f.compatible(partial[j]):
                taken[i] = j
                break
    if len(taken) != len(full):
        return None
    return [taken[i] for i in range(len(full))]


def consistent(state: State, prompt: Spec) -> bool:
    """Can ``state`` be completed (by adding objects) into one that satisfies ``prompt``?

    Every drawn object must stand for a distinct prompt object and every prompt relation between
    two drawn objects must hold. Objects of the prompt that are not drawn yet are merely missing.
    """
    return consistent_assignment(state, prompt) is not None


def consistent_assignment(state: State, prompt: Spec) -> list[int] | None:
    if len(state.objects) > len(prompt.objects):
        return None
    full = tuple(p.obj for p in state.objects)
    # Try every compatible assignment (scenes are tiny) so a relation can pick between twins.
    for m in _assignments(full, prompt.objects):
        inv = {j: i for i, j in enumerate(m)}
        if all(relation_holds(state.objects[inv[a]], r, state.objects[inv[b]])
               for a, r, b in prompt.relations if a in inv and b in inv):
            return m
    return None


def _assignments(full, partial, start=0, used=()):
    if start == len(full):
        yield []
        return
    for j, p in enumerate(partial):
        if j not in used and full[start].compatible(p):
            for rest in _assignments(full, partial, start + 1, (*used, j)):
                yield [j, *rest]


def satisfies(state: State, prompt: Spec) -> bool:
    """Exactly the prompt's objects (attributes compatible) with all its relations holding."""
    return len(state.objects) == len(prompt.objects) and consistent(state, prompt)


def counts(objs) -> Counter:
    return Counter(o.shape for o in objs)


def realize(spec: Spec, rng: np.random.Generator, tries: int = 200, layout: str = "random") -> State:
    """Fill open attributes at random and place objects in distinct cells obeying the relations:
    at random (``layout="random"``) or in the first cells of :data:`CANONICAL_CELLS` that obey them
    (``"canonical"``: the same prompt always gets the same layout)."""
    if len(spec.objects) > MAX_OBJECTS:
        raise ValueError(f"{len(spec.objects)} objects do not fit a {GRID}x{GRID} layout")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    objs = [replace(o, color=o.color or COLORS[rng.integers(len(COLORS))],
                    size=o.size or SIZES[rng.integers(len(SIZES))]) for o in spec.objects]
    if layout == "canonical":
        for cells in itertools.permutations(CANONICAL_CELLS, len(objs)):
            placed = tuple(Placed(o.shape, o.color, o.size, *c, uid=n)
                           for n, (o, c) in enumerate(zip(objs, cells)))
            if all(relation_holds(placed[a], r, placed[b]) for a, r, b in spec.relations):
                return State(placed, spec.relations)
        raise ValueError(f"could not place {spec} (contradictory relations?)")
    cells = [(r, c) for r in range(GRID) for c in range(GRID)]
    for _ in range(tries):
        pick = rng.permutation(len(cells))[: len(objs)]
        placed = tuple(Placed(o.shape, o.color, o.size, *cells[k], uid=n)
                       for n, (o, k) in enumerate(zip(objs, pick)))
        if all(relation_holds(placed[a], r, placed[b]) for a, r, b in spec.relations):
            return State(placed, spec.relations)
    raise ValueError(f"could not place {spec} (contradictory relations?)")
