"""The oracle inspector: the world's exact judge writes the critique of each draft, the model refines.

The analogue of the paper's "BAGEL + GPT inspector" row, and an upper bound for the Inspect step: with
it, a process model that still does not improve cannot *fix* its mistakes; without it (the model's own
critique), one that does not improve may only fail to *see* them. ``train/evaluate.py --mode oracle``
runs process mode with it (``Painter.generate(..., critic=OracleInspector())``).

The draft is read by the same detector that scores images, turned into a scene (``detect.state_of``)
and compared with the plan's ``<des>`` scene by ``judge.compare_state``: the critique is the training
data's wording of that verdict (``critiques.critique_text``, deterministic). A plan that does not
parse is replaced by the prompt's scene; when neither parses (a knowledge prompt with a garbled plan)
the verdict is the plain "does not match" (nothing matches an unreadable plan).
"""

from __future__ import annotations

from dataclasses import replace

from ..io import to_uint8
from ..world.critiques import Critique, critique_text
from ..world.detect import Detector, state_of
from ..world.judge import compare_state
from ..world.language import NUMBERS, ParseError, parse_plan, parse_prompt


class OracleInspector:
    """A ``procpaint.inference.painter.Critic``: (prompt, plan text, draft) -> critique text."""

    def __init__(self, detector: Detector | None = None):
        self.detector = detector or Detector()
        self.calls = 0

    def __call__(self, prompt: str, plan: str, image) -> str:
        self.calls += 1
        try:
            wanted = parse_plan(plan)[1]
        except ParseError:
            try:
                wanted = parse_prompt(prompt)
            except ParseError:
                return critique_text(Critique("image", ok=False))
        found = self.detector.detect(to_uint8(image))
        verdict = compare_state(wanted, state_of(found))[0]
        # The world's words count to len(NUMBERS) - 1: a draft with more objects than that is said to
        # have that many (a count the grammar cannot name is not a critique the model could read).
        top = len(NUMBERS) - 1
        errors = tuple(replace(e, n=min(e.n, top), m=min(e.m, top)) for e in verdict.errors)
        return critique_text(replace(verdict, errors=errors))
