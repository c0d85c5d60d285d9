"""The judge's robustness on renders of known scenes: right scenes and planted errors, degraded.

For each GenEval tag a seeded set of held-out prompts (:func:`geneval.generate_metadata`) is realised
(:func:`procpaint.world.scene.realize`) and rendered; next to every right scene stand planted errors
of its state -- one object's shape changed, one stated colour changed, one object extra or missing,
the related pair swapped. Both judges see the same (degraded) images:

* ``geneval``: :func:`geneval.detect` + :func:`geneval.evaluate` (GenEval's rules, its thresholds);
* ``exact``:   ``Detector.state`` + :func:`procpaint.world.scene.satisfies` (the symbolic judge).

A planted error counts only where the judge's rule rejects the *known* erroneous scene (GenEval
ignores an extra object outside ``counting`` and a colour where no clause states one), so the
reject rate measures the detector, never the rule. Nothing here looks at a model's output.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..world.degrade import degrade
from ..world.detect import Detector, state_of
from ..world.render import Renderer
from ..world.scene import COLORS, SHAPES, Placed, Spec, State, realize, satisfies
from . import geneval

ERROR_KINDS = ("shape", "color", "extra", "missing", "relation")


@dataclass(frozen=True)
class Case:
    """One known scene: its metadata line, scene graph, right state and planted errors."""

    meta: dict
    spec: Spec
    state: State
    errors: tuple[tuple[str, State], ...]
    seed: int


def plant(spec: Spec, state: State, kind: str, rng: np.random.Generator) -> State | None:
    """``state`` with one planted error of ``kind``, or None when the kind does not apply."""
    objs = list(state.objects)
    if not objs and kind != "extra":
        return None
    i = int(rng.integers(len(objs))) if objs else 0
    if kind == "shape":
        others = [s for s in SHAPES if s != objs[i].shape]
        objs[i] = replace(objs[i], shape=others[int(rng.integers(len(others)))])
    elif kind == "color":
        stated = [k for k, o in enumerate(spec.objects) if o.color is not None]
        if not stated:
            return None
        i = stated[int(rng.integers(len(stated)))]
        others = [c for c in COLORS if c != objs[i].color]
        objs[i] = replace(objs[i], color=others[int(rng.integers(len(others)))])
    elif kind == "extra":
        free = state.free_cells()
        if not free:
            return None
        r, c = free[int(rng.integers(len(free)))]
        objs.append(replace(objs[i], row=r, col=c, uid=max(p.uid for p in objs) + 1))
    elif kind == "missing":
        del objs[i]
    elif kind == "relation":
        if not state.relations:
            return None
        a, _, b = state.relations[0]
        pa, pb = objs[a], objs[b]
        objs[a], objs[b] = replace(pa, row=pb.row, col=pb.col), replace(pb, row=pa.row, col=pa.col)
    else:
        raise ValueError(f"unknown error kind {kind!r}; known: {ERROR_KINDS}")
    return State(tuple(objs))


def cases(tag: str, n: int, seed: int = 0) -> list[Case]:
    """``n`` known scenes of ``tag`` with their planted errors (seeded)."""
    meta = geneval.generate_metadata({tag: n}, seed=seed)
    out = []
    for k, m in enumerate(meta):
        s = 7919 * seed + 1_000 * geneval.GENEVAL_TAGS.index(tag) + k
        rng = np.random.default_rng([s, 31])
        spec = geneval.spec_from_json(m["spec"])
        state = realize(spec, rng)
        errs = tuple((kind, e) for kind in ERROR_KINDS if (e := plant(spec, state, kind, rng)) is not None)
        out.append(Case(m, spec, state, errs, s))
    return out


def true_boxes(state: State, renderer: Renderer, seed: int) -> dict[str, list[geneval.Box]]:
    """GenEval's view of a known scene: every object's exact box, confidence 1."""
    found: dict[str, list[geneval.Box]] = {}
    for p in state.objects:
        cx, cy, r, _ = renderer.geometry(p, seed)
        x0, y0, x1, y1 = geneval.unit_box(p.shape)
        found.setdefault(p.shape, []).append(
            geneval.Box(p.shape, p.color, (cx + r * x0, cy + r * y0, cx + r * x1, cy + r * y1), 1.0))
    return found


def rule_rejects(judge: str, case: Case, state: State, renderer: Renderer) -> bool:
    """Does ``judge``'s rule reject the known ``state`` (no detector involved)?"""
    if judge == "exact":
        return not satisfies(state, case.spec)
    return not geneval.evaluate(true_boxes(state, renderer, case.seed), case.meta)[0]


def verdict(judge: str, detections: list, case: Case) -> bool:
    """Does ``judge`` accept an image with ``detections`` (``Detector.detect``) as ``case``'s prompt?
    The same as ``satisfies(detector.state(image), spec)`` / ``evaluate(geneval.detect(image, ...))``."""
    if judge == "exact":
        return satisfies(state_of(detections), case.spec)
    return geneval.evaluate(geneval.boxes(detections, tag=case.meta["tag"]), case.meta)[0]


def rates(case_list: list[Case], renderer: Renderer, degradation: str, detector: Detector,
          judges=("geneval", "exact")) -> dict:
    """{judge: {"accept": (k, n), "reject": (k, n), "by_kind": {kind: (k, n)}}} on degraded renders."""
    out = {j: {"accept": [0, 0], "reject": [0, 0], "by_kind": {}} for j in judges}
    for c in case_list:
        dets = detector.detect(degrade(renderer.paint(c.state, c.seed), degradation, c.seed))
        for j in judges:
            out[j]["accept"][0] += verdict(j, dets, c)
            out[j]["accept"][1] += 1
        for kind, e in c.errors:
            bad = detector.detect(degrade(renderer.paint(e, c.seed), degradation, c.seed))
            for j in judges:
                if not rule_rejects(j, c, e, renderer):
                    continue
                rej = not verdict(j, bad, c)
                out[j]["reject"][0] += rej
                out[j]["reject"][1] += 1
                kk = out[j]["by_kind"].setdefault(kind, [0, 0])
                kk[0] += rej
                kk[1] += 1
    return out


# ---------------------------------------------------------------- things that are not objects

NEGATIVE_KINDS = ("blob", "smudge4", "half")


def negative(kind: str, size: int, seed: int) -> np.ndarray:
    """An (size, size, 3) uint8 image holding one thing that is not a whole object of the world.

    blob:    a Gaussian blob of a palette colour, peak alpha 0.7-1, width 0.5-0.8 of a small
             object's half-extent (what a generator paints when it has the colour but no shape);
    smudge4: a 2x2-pixel block of a palette colour (4 pixels);
    half:    a rendered object with one half (left / right / top / bottom) painted over by background.
    """
    from ..world.scene import BACKGROUND, GRID, PALETTE, SIZE_FRACTION
    rng = np.random.default_rng([seed, 77])
    cell = size / GRID
    rgb = np.array(PALETTE[COLORS[int(rng.integers(len(COLORS)))]], np.float64)
    row, col = int(rng.integers(GRID)), int(rng.integers(GRID))
    cy, cx = (row + 0.5 + rng.uniform(-0.1, 0.1)) * cell, (col + 0.5 + rng.uniform(-0.1, 0.1)) * cell
    img = np.empty((size, size, 3), np.float64)
    img[:] = BACKGROUND
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if kind == "blob":
        s = rng.uniform(0.5, 0.8) * SIZE_FRACTION["small"] * cell
        alpha = rng.uniform(0.7, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    elif kind == "smudge4":
        alpha = np.zeros((size, size))
        y, x = int(cy), int(cx)
        alpha[y: y + 2, x: x + 2] = 1.0
    elif kind == "half":
        p = Placed(SHAPES[int(rng.integers(len(SHAPES)))], COLORS[int(rng.integers(len(COLORS)))],
                   ("small", "large")[int(rng.integers(2))], row, col)
        r = Renderer(size)
        out = r.paint(State((p,)), seed).astype(np.float64)
        ox, oy, _, _ = r.geometry(p, seed)
        side = int(rng.integers(4))
        cover = [xx < ox, xx > ox, yy < oy, yy > oy][side]
        out[cover] = BACKGROUND
        return np.rint(out).astype(np.uint8)
    else:
        raise ValueError(f"unknown negative kind {kind!r}; known: {NEGATIVE_KINDS}")
    img = img * (1 - alpha[..., None]) + alpha[..., None] * rgb
    return np.rint(img).astype(np.uint8)
