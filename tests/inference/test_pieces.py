"""Units: the Euler schedule, CFG combination, the grammar's masks, seeded top-p sampling, the cache."""

from __future__ import annotations

import torch

from procpaint.inference import decoding as G
from procpaint.inference.engine import BranchCache
from procpaint.inference.sampler import cfg_active, combine_cfg, schedule, stochastic_step


def test_schedule_is_shifted_linspace():
    t, dt = schedule(50, 3.0)
    ref = torch.linspace(1, 0, 50, dtype=torch.float64)
    ref = 3 * ref / (1 + 2 * ref)
    assert t.shape == (49,) and torch.allclose(t.double(), ref[:-1]) and abs(float(dt.sum()) - 1) < 1e-5
    assert (dt > 0).all()


def _sample(velocity, n: int, steps: int, eta: float, seed: int = 0) -> torch.Tensor:
    """n scalars sampled from t = 1 to 0 with ``stochastic_step`` under an exact ``velocity(x, t)``."""
    g = torch.Generator().manual_seed(seed)
    ts, _ = schedule(steps, 3.0)
    x = torch.randn(n, dtype=torch.float64, generator=g)
    for i, t in enumerate(ts.tolist()):
        t_next = float(ts[i + 1]) if i + 1 < len(ts) else 0.0
        x = stochastic_step(x, velocity(x, t), t, t_next, eta, torch.randn(n, dtype=torch.float64, generator=g))
    return x


def test_stochastic_step_is_euler_at_eta_0_and_exact_where_the_velocity_is():
    g = torch.Generator().manual_seed(0)
    x, v, n = (torch.randn(64, 12, generator=g, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(stochastic_step(x, v, 0.8, 0.55, 0.0, n), x - v * (0.8 - 0.55))
    # One data point x0: the exact velocity (x - x0) / t recovers it at every step, whatever the
    # fresh noise: every eta lands on x0 (the noise's share only changes the path).
    x0 = 0.7
    for eta in (0.0, 0.5, 1.0):
        out = _sample(lambda x, t: (x - x0) / t, 1000, 10, eta)
        torch.testing.assert_close(out, torch.full_like(out, x0))


def test_stochastic_sampling_keeps_the_data_distribution():
    # Gaussian data N(0, 0.5^2): the exact velocity is linear in x; with enough steps every eta
    # samples the data's spread (fresh noise at eta = 1 is DDPM's posterior, not extra noise:
    # a fixed share of fresh noise per step shrinks it: 0.48 at eta 0.5, 0.35 at eta 1)
    sig2 = 0.25

    def velocity(x, t):
        d = (1 - t) ** 2 * sig2 + t * t
        return (t - (1 - t) * sig2) / d * x

    for eta in (0.0, 0.5, 1.0):
        out = _sample(velocity, 100_000, 400, eta)
        assert abs(float(out.std()) - 0.5) < 0.015, (eta, float(out.std()))
        assert abs(float(out.mean())) < 0.01


def test_cfg_combination():
    g = torch.Generator().manual_seed(0)
    v, vt, vi = (torch.randn(6, 4, generator=g) for _ in range(3))
    assert combine_cfg(v, None, None, text_scale=4, image_scale=2, renorm="global") is v
    raw = vi + 2 * (vt + 4 * (v - vt) - vi)
    out = combine_cfg(v, vt, vi, text_scale=4, image_scale=2, renorm="none")
    torch.testing.assert_close(out, raw)
    glob = combine_cfg(v, vt, vi, text_scale=4, image_scale=2, renorm="global")
    assert torch.isclose(glob.norm(), torch.minimum(v.norm(), raw.norm()))
    tok = combine_cfg(v, vt, vi, text_scale=4, image_scale=2, renorm="token")
    assert (tok.norm(dim=-1) <= v.norm(dim=-1) + 1e-5).all()
    assert cfg_active(1.0, 2.0, (0.0, 1.0)) and not cfg_active(0.0, 2.0, (0.0, 1.0))
    assert not cfg_active(0.5, 1.0, (0.0, 1.0)) and not cfg_active(0.95, 2.0, (0.4, 0.9))


def test_grammar_masks(tok):
    gr = G.TagGrammar(tok)
    ids = tok.tag_ids
    assert gr.allowed(G.PLAN_OPEN).nonzero().flatten().tolist() == [ids["<ins>"]]
    assert gr.allowed(G.TO_IMAGE).nonzero().flatten().tolist() == [tok.vision_start_id]
    crit = gr.allowed(G.CRITIQUE)
    assert crit[tok.eos_id] and crit[ids["<refine>"]] and not crit[tok.vision_start_id]
    assert not gr.allowed(G.INS)[tok.eos_id] and gr.allowed(G.INS)[ids["</ins>"]]
    s = G.PLAN_OPEN
    for t in tok.encode("<ins>add a circle</ins><des>a circle</des>"):
        s = gr.advance(s, t)
    assert s == G.TO_IMAGE
    loose = G.TagGrammar(tok, constrained=False)
    assert loose.allowed(G.PLAN_OPEN)[tok.eos_id] and not loose.allowed(G.PLAN_OPEN)[tok.pad_id]
    assert loose.allowed(G.BETWEEN, planner=True).sum() == 2


def test_sampling_is_seeded_and_top_p_truncates():
    logits = torch.tensor([3.0, 2.9, -5.0, -5.0])
    allowed = torch.ones(4, dtype=torch.bool)
    draws = lambda seed, p: [G.sample_token(logits, allowed, temperature=1.0, top_p=p,
                                            generator=torch.Generator().manual_seed(seed)) for _ in range(1)]
    assert draws(1, 0.9) == draws(1, 0.9)
    g = torch.Generator().manual_seed(0)
    seen = {G.sample_token(logits, allowed, temperature=1.0, top_p=0.5, generator=g) for _ in range(50)}
    assert seen == {0}
    assert G.sample_token(logits, allowed.logical_not().logical_or(torch.tensor([0, 0, 1, 0]).bool()),
                          temperature=0.0, top_p=1.0, generator=g) == 2


def test_branch_cache_reserve_fork_drop():
    like = [(2, 3, torch.float32, torch.device("cpu"))]
    c = BranchCache()
    r = c.reserve(0, 5, like)
    r.k[0][:, :5] = torch.arange(5.0)[None, :, None]
    r.length = 5
    grown = c.reserve(0, 200, like)                    # past capacity: rows survive the move
    assert grown.capacity >= 205 and grown.length == 5
    assert grown.k[0][1, :5, 2].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    c.fork(0, 1)
    c.rows[1].k[0][:, 0] = 9.0                         # a copy, not a view
    assert c.rows[0].k[0][0, 0, 0] == 0.0 and c.length_of(1) == 5 and c.length == 10
    assert c.nbytes(1) == 2 * 2 * 5 * 3 * 4
    c.drop([0, 7])
    assert list(c.rows) == [1] and c.length == 5


def test_engine_queries_of_one_owner_in_one_call(model, tok):
    """Two writers and a prefix reader of one owner in one call: each sees the cache as it was before
    the call plus only its own tokens (never another query's), and both writers' rows are kept in
    query order — the same numbers as running the queries one by one."""
    from procpaint.inference.engine import Engine, ImageSpan, Query, TextSpan

    ids = tok.encode("a photo of a red circle")
    z = torch.randn(16, model.cfg.latent_dim, generator=torch.Generator().manual_seed(0))
    prefix = [TextSpan(ids, 0), ImageSpan(z, 0.0, len(ids), (4, 4), noise=False)]
    a = [TextSpan(tok.encode("the image matches"), len(ids) + 1)]
    b = [TextSpan(tok.encode("add a circle"), len(ids) + 1)]
    reader = [ImageSpan(z * 0.5, 0.7, len(ids), (4, 4), noise=True)]

    def primed() -> Engine:
        e = Engine(model, tok.vision_start_id, tok.vision_end_id)
        e.run([Query(prefix, owner=0, write=True)])
        return e

    together = primed()
    n0 = together.cache.length_of(0)
    outs = together.run([Query(a, owner=0, write=True), Query(b, owner=0, write=True),
                         Query(reader, owner=0, limit=len(ids))])
    alone = []
    for segs, limit, write in ((a, 1 << 62, True), (b, 1 << 62, True), (reader, len(ids), False)):
        e = primed()
        alone.append((e, e.run([Query(segs, owner=0, limit=limit, write=write)])[0]))
    for got, (_, want) in zip(outs, alone):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    rows = together.cache.rows[0]
    na, nb = sum(s.num_tokens for s in a), sum(s.num_tokens for s in b)
    assert rows.length == n0 + na + nb
    for layer in range(model.cfg.num_layers):          # a's rows, then b's, where one-by-one put them
        want_a = alone[0][0].cache.rows[0].k[layer][:, n0:n0 + na]
        want_b = alone[1][0].cache.rows[0].k[layer][:, n0:n0 + nb]
        torch.testing.assert_close(rows.k[layer][:, n0:n0 + na], want_a, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rows.k[layer][:, n0 + na:n0 + na + nb], want_b, atol=1e-5, rtol=1e-5)
