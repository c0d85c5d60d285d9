"""Text decoding: the trajectory grammar as a token-level state machine, and seeded sampling.

The grammar (docs/ARCHITECTURE.md, "One trajectory, as the model reads and writes it")::

    PROMPT  <ins> words </ins> <des> words </des>  <|vision_start|> draft
            critique-words ( <refine> words </refine> <|vision_start|> refined | <ins> ... | EOS )
    after a refined image (and, in planner mode, after every image):  <ins> ... | EOS

With ``constrained`` on, tokens the grammar forbids in the current state get -inf logits: a plan
must open with ``<ins>``, close it, open and close ``<des>``, and is followed by
``<|vision_start|>``; a refine must close its tag before its image. Words are every non-special
token. Off, only ``<pad>`` and ``<|vision_end|>`` (never predicted in training) are masked and the
states still name the stages.
"""

from __future__ import annotations

import torch

from procpaint.sequence.tokenizer import TextTokenizer

# States: what the next token may be.
PLAN_OPEN, INS, DES_OPEN, DES, TO_IMAGE, CRITIQUE, REFINE, BETWEEN = range(8)
STATE_NAMES = ("plan_open", "ins", "des_open", "des", "to_image", "critique", "refine", "between")


class TagGrammar:
    """Allowed-token masks per state and the transitions on a sampled token."""

    def __init__(self, tok: TextTokenizer, *, constrained: bool = True):
        self.constrained = constrained
        v = tok.vocab_size
        t = tok.tag_ids
        self.eos, self.vs, self.ve, self.pad = tok.eos_id, tok.vision_start_id, tok.vision_end_id, tok.pad_id
        self.ins, self.ins_end, self.des, self.des_end = t["<ins>"], t["</ins>"], t["<des>"], t["</des>"]
        self.refine, self.refine_end = t["<refine>"], t["</refine>"]
        special = [self.eos, self.vs, self.ve, self.pad, *t.values()]
        if tok.unk_id is not None:
            special.append(tok.unk_id)
        words = torch.ones(v, dtype=torch.bool)
        words[special] = False

        def only(*ids):
            m = torch.zeros(v, dtype=torch.bool)
            m[list(ids)] = True
            return m

        loose = torch.ones(v, dtype=torch.bool)
        loose[[self.pad, self.ve]] = False
        self._loose = loose
        self._masks = {
            PLAN_OPEN: only(self.ins), INS: words | only(self.ins_end), DES_OPEN: only(self.des),
            DES: words | only(self.des_end), TO_IMAGE: only(self.vs),
            CRITIQUE: words | only(self.refine, self.ins, self.eos), REFINE: words | only(self.refine_end),
            BETWEEN: only(self.ins, self.eos),
        }

    def allowed(self, state: int, *, planner: bool = False) -> torch.Tensor:
        """(V,) bool mask of tokens allowed in ``state``. Planner mode's BETWEEN is always enforced
        (skipping inspection is what the mode means)."""
        if self.constrained or (planner and state == BETWEEN):
            return self._masks[state]
        return self._loose

    def advance(self, state: int, token: int) -> int:
        """The state after ``token``; unconstrained text that fits no rule keeps the state."""
        if token == self.ins:
            return INS
        if token == self.refine:
            return REFINE
        nxt = {(INS, self.ins_end): DES_OPEN, (DES_OPEN, self.des): DES, (DES, self.des_end): TO_IMAGE,
               (REFINE, self.refine_end): TO_IMAGE}.get((state, token))
        return state if nxt is None else nxt


def sample_token(logits: torch.Tensor, allowed: torch.Tensor, *, temperature: float, top_p: float,
                 generator: torch.Generator) -> int:
    """One token from (V,) logits restricted to ``allowed``: argmax when temperature == 0, else
    softmax(logits / T) truncated to the smallest set with mass >= top_p, drawn from ``generator``
    (a CPU generator, so draws do not depend on the device)."""
    x = logits.detach().float().cpu().masked_fill(~allowed, float("-inf"))
    if temperature == 0:
        return int(x.argmax())
    probs = torch.softmax(x / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        # keep tokens whose preceding mass is < top_p (the top token always stays)
        drop = sorted_p.cumsum(0) - sorted_p >= top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))
