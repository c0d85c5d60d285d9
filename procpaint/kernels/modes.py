"""The attention mode of a split of a packed sequence: the one definition every room uses.

``Mode`` members are strings ("causal", "full", "noise": what ``PackedBatch.attn_modes`` and the
sequence planner hold, equal to the plain strings) with an int ``code``: the value the native mask
kernels take, mirrored by ``enum Mode`` in csrc/packing/packing_rule.h (tests/kernels/test_masks.py
checks that they agree). The rule itself: docs/ARCHITECTURE.md, "Mask semantics".
"""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    CAUSAL = "causal"     # text: token q sees keys k <= q
    FULL = "full"         # a clean image: sees its whole split, seen by later splits
    NOISE = "noise"       # a noised image: sees its whole split, seen by no other split

    @property
    def code(self) -> int:
        """The int the native kernels and the references take (0 causal, 1 full, 2 noise)."""
        return _CODES[self]


_CODES = {Mode.CAUSAL: 0, Mode.FULL: 1, Mode.NOISE: 2}
