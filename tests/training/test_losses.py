"""training/losses.py against plain-torch formulas: the global per-token means over ranks (two ranks
simulated in one process by faking the all-reduce), and the non-finite path every rank agrees on."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from procpaint.training import losses
from procpaint.training.losses import packed_loss

V, D = 11, 6


def _rank_inputs(n_ce: int, n_mse: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(ce_logits=torch.randn(n_ce, V, generator=g).requires_grad_(),
                ce_labels=torch.randint(0, V, (n_ce,), generator=g),
                v_pred=torch.randn(n_mse, D, generator=g).requires_grad_(),
                clean=torch.randn(n_mse, D, generator=g), noise=torch.randn(n_mse, D, generator=g))


def _reference(ranks: list[dict], lambda_ce: float) -> tuple[float, float]:
    """(CE, MSE) over every token of every rank, from the formulas in losses.py's docstring."""
    logits = torch.cat([r["ce_logits"] for r in ranks]).detach()
    labels = torch.cat([r["ce_labels"] for r in ranks])
    pred, clean, noise = (torch.cat([r[k] for r in ranks]).detach() for k in ("v_pred", "clean", "noise"))
    ce = F.cross_entropy(logits.double(), labels).item() if labels.numel() else math.nan
    mse = ((pred.double() - (noise.double() - clean.double())) ** 2).mean(-1).mean().item() \
        if pred.shape[0] else math.nan
    return ce, mse


class FakeWorld:
    """A process group of ``world`` ranks simulated in one process: ``run`` calls ``packed_loss`` once
    per rank, each rank's all-reduce adding the other ranks' contributions (captured in a first pass,
    so the test does not depend on what the all-reduce carries)."""

    def __init__(self, monkeypatch, world: int):
        self.world, self.calls, self._peer = world, 0, None
        monkeypatch.setattr(losses.dist, "is_available", lambda: True)
        monkeypatch.setattr(losses.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(losses.dist, "get_world_size", lambda group=None: world)
        monkeypatch.setattr(losses.dist, "all_reduce", self._all_reduce)

    def _all_reduce(self, t, op=None, group=None, async_op=False):
        self.calls += 1
        if self._peer is None:          # capture pass: remember what this rank contributes
            self._sent.append(t.clone())
        else:
            t += self._peer

    def run(self, ranks: list[dict], **kw) -> list[losses.LossParts]:
        self._peer, self._sent = None, []
        for r in ranks:
            packed_loss(**{k: v.detach() for k, v in r.items()}, **kw)
        sent = self._sent
        self.calls = 0
        out = []
        for i, r in enumerate(ranks):
            self._peer = sum(s for j, s in enumerate(sent) if j != i)
            out.append(packed_loss(**r, **kw))
        return out


@pytest.mark.parametrize("shares", [((3, 5), (9, 1)), ((4, 4), (4, 4)), ((0, 7), (6, 2))],
                         ids=["uneven", "even", "no-ce-on-rank0"])
def test_two_ranks_give_the_global_token_mean_and_its_gradient(monkeypatch, shares):
    lam = 0.7
    ranks = [_rank_inputs(n_ce, n_mse, seed=i) for i, (n_ce, n_mse) in enumerate(shares)]
    world = FakeWorld(monkeypatch, world=2)
    parts = world.run(ranks, lambda_ce=lam)
    assert world.calls == 2                          # one all-reduce per rank and step
    ce, mse = _reference(ranks, lam)
    for p, (n_ce, n_mse) in zip(parts, shares):
        assert not p.skipped and p.nonfinite_ranks == 0
        assert (p.ce_tokens, p.mse_tokens) == (n_ce, n_mse)
        assert p.ce.item() == pytest.approx(ce, rel=1e-5) and p.mse.item() == pytest.approx(mse, rel=1e-5)
        assert p.value == pytest.approx(lam * ce + mse, rel=1e-5)
    # DDP averages the ranks' gradients: the mean of the ranks' losses is the global loss, whatever
    # each rank's share of the tokens (a mean of per-rank means would not be, for uneven shares).
    mean_loss = sum(p.loss for p in parts) / 2
    assert mean_loss.item() == pytest.approx(lam * ce + mse, rel=1e-5)
    mean_loss.backward()
    logits = torch.cat([r["ce_logits"] for r in ranks]).detach().requires_grad_()
    pred = torch.cat([r["v_pred"] for r in ranks]).detach().requires_grad_()
    target = torch.cat([r["noise"] - r["clean"] for r in ranks])
    labels = torch.cat([r["ce_labels"] for r in ranks])
    # the reference loss, on one process holding the whole global batch; DDP's 1/world average is
    # the gradient of the mean above, so each rank's leaf gradient is half the reference one
    (lam * F.cross_entropy(logits, labels) + (pred - target).pow(2).mean(-1).mean()).backward()
    got_logits = torch.cat([r["ce_logits"].grad for r in ranks])
    got_pred = torch.cat([r["v_pred"].grad for r in ranks])
    torch.testing.assert_close(got_logits, logits.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got_pred, pred.grad, rtol=1e-5, atol=1e-7)


def test_no_ce_token_anywhere_reports_nan_ce_and_the_mse_alone(monkeypatch):
    ranks = [_rank_inputs(0, 3, seed=0), _rank_inputs(0, 5, seed=1)]
    parts = FakeWorld(monkeypatch, world=2).run(ranks)
    _, mse = _reference(ranks, 1.0)
    for p in parts:
        assert math.isnan(p.ce.item()) and p.mse.item() == pytest.approx(mse, rel=1e-5)
        assert p.value == pytest.approx(mse, rel=1e-5) and torch.isfinite(p.loss)


@pytest.mark.parametrize("where", ["ce_logits", "v_pred"])
def test_nonfinite_on_one_rank_skips_on_every_rank(monkeypatch, where):
    ranks = [_rank_inputs(4, 3, seed=0), _rank_inputs(5, 2, seed=1)]
    with torch.no_grad():
        ranks[1][where][0, 0] = math.nan if where == "ce_logits" else math.inf
    world = FakeWorld(monkeypatch, world=2)
    parts = world.run(ranks)
    assert world.calls == 2                          # the flag rides in the same single all-reduce
    for p in parts:
        assert p.skipped and p.nonfinite_ranks == 1
        # a zero still on the graph: the backward (and DDP's gradient all-reduce) runs on every rank
        assert p.loss.item() == 0.0 and p.loss.requires_grad
    for p in parts:
        p.loss.backward()
    # the finite rank's gradients are exact zeros (the update is skipped anyway, on every rank)
    assert torch.equal(ranks[0]["ce_logits"].grad, torch.zeros_like(ranks[0]["ce_logits"]))
    assert torch.equal(ranks[0]["v_pred"].grad, torch.zeros_like(ranks[0]["v_pred"]))


def test_single_process_matches_the_reference_and_flags_nonfinite():
    r = _rank_inputs(7, 4, seed=3)
    p = packed_loss(**r, lambda_ce=2.0)
    ce, mse = _reference([r], 2.0)
    assert not p.skipped
    assert p.loss.item() == pytest.approx(2.0 * ce + mse, rel=1e-5)
    assert p.ce.item() == pytest.approx(ce, rel=1e-5) and p.mse.item() == pytest.approx(mse, rel=1e-5)
    with torch.no_grad():
        r["clean"][1, 2] = math.nan
    bad = packed_loss(**r)
    assert bad.skipped and bad.nonfinite_ranks == 1 and bad.loss.item() == 0.0 and bad.loss.requires_grad
