"""The unified model on hand-built packs (debug preset): shapes, init, MoT routing, masking at the
model level, RoPE with shared image ids, KV-cache equivalence, and a short overfit."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from procpaint.model import AttnContext, Routing, apply_activation_checkpointing, build_model
from procpaint.model.transformer import rf_interpolate


def _loss(out, batch, lambda_ce=1.0):
    ce = F.cross_entropy(out.ce_logits.float(), batch.ce_labels)
    mse = (out.v_pred.float() - (out.noise - out.clean)).pow(2).mean(-1).mean()
    return lambda_ce * ce + mse


def test_shapes_and_zero_init(debug_cfg, pack):
    model = build_model(debug_cfg)
    out = model(pack, generator=torch.Generator().manual_seed(0))
    C, M = pack.ce_indexes.numel(), int(pack.latent_noised.sum())
    D = debug_cfg.latent_dim
    assert out.ce_logits.shape == (C, debug_cfg.vocab_size)
    assert out.v_pred.shape == out.clean.shape == out.noise.shape == (M, D)
    assert out.timesteps.shape == (M,)
    # llm2vae is zero-initialised: the velocity starts at exactly 0.
    assert torch.count_nonzero(out.v_pred) == 0
    # Clean targets are the patchified images at the noised tokens' (image, patch) ids.
    tokens = model.codec.encode(pack.images)
    rows = pack.latent_noised.nonzero().squeeze(1)
    assert torch.equal(out.clean, tokens[pack.latent_image_ids[rows], pack.latent_patch_ids[rows]])
    # Untrained tied head: CE near log(V).
    ce = F.cross_entropy(out.ce_logits, pack.ce_labels)
    assert abs(ce.item() - torch.log(torch.tensor(float(debug_cfg.vocab_size))).item()) < 0.2


def test_noise_argument_and_generator_are_deterministic(debug_cfg, pack):
    model = build_model(debug_cfg)
    a = model(pack, generator=torch.Generator().manual_seed(3))
    b = model(pack, generator=torch.Generator().manual_seed(3))
    c = model(pack, noise=a.noise)
    assert torch.equal(a.noise, b.noise) and torch.equal(a.ce_logits, c.ce_logits)


def _naive_layer(layer, x, is_gen, position_ids, mask, cfg):
    """Every token computes both experts, then keeps its own; plain masked softmax attention."""
    gen = layer.gen if layer.gen is not None else layer.und
    sel = lambda fu, fg, h: torch.where(is_gen[:, None], fg(h), fu(h))
    L, h, hkv, hd = x.shape[0], cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    qkv = sel(layer.und.project_qkv, gen.project_qkv, x)
    q, k, v = qkv.split([h * hd, hkv * hd, hkv * hd], dim=-1)
    q, k, v = q.view(L, h, hd), k.view(L, hkv, hd), v.view(L, hkv, hd)
    inv = cfg.rope_theta ** (-torch.arange(0, hd, 2).double() / hd)
    ang = position_ids.double()[:, None] * inv[None]                        # (L, hd/2)
    cos, sin = ang.cos().float()[:, None], ang.sin().float()[:, None]

    def rot(t):
        a, b = t[..., : hd // 2], t[..., hd // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    q, k = rot(q), rot(k).repeat_interleave(h // hkv, dim=1)
    v = v.repeat_interleave(h // hkv, dim=1)
    s = torch.einsum("qhd,khd->hqk", q, k) / hd**0.5
    att = torch.einsum("hqk,khd->qhd", s.masked_fill(~mask, float("-inf")).softmax(-1), v).reshape(L, -1)
    x = x + sel(layer.und.o, gen.o, att)
    return x + sel(layer.und.mlp_block, gen.mlp_block, x)


def test_mot_layer_matches_per_token_reference(debug_cfg, pack, ref_mask):
    model = build_model(debug_cfg)
    with torch.no_grad():                                                 # make llm2vae etc. non-trivial
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    layer, L = model.layers[0], pack.seq_len
    x = torch.randn(L, debug_cfg.hidden_size)
    is_gen = torch.zeros(L, dtype=torch.bool)
    is_gen[pack.gen_indexes] = True
    routing, attn = model.prepare(pack)
    cos, sin = model.rope(pack.position_ids, x.dtype)
    from procpaint.model.layers import LayerInputs

    got, _ = layer(routing.routed(x), LayerInputs(routing, cos, sin, attn))
    want = _naive_layer(layer, x, is_gen, pack.position_ids,
                        ref_mask(pack.split_lens, pack.attn_modes, pack.sample_lens), debug_cfg)
    torch.testing.assert_close(routing.sequence(got), want, atol=1e-5, rtol=1e-5)


def test_expert_gradients_follow_routing(debug_cfg, pack):
    model = build_model(debug_cfg)
    torch.nn.init.normal_(model.llm2vae.weight, std=0.02)                  # let v_pred depend on h
    out = model(pack, generator=torch.Generator().manual_seed(0))
    # A latent-only loss: the last layer's understanding-only weights (o, MLP, post-norm) and the
    # text head never influence a latent output.
    out.v_pred.pow(2).sum().backward(retain_graph=True)
    last = model.layers[-1]
    for name, p in [*last.und.o.named_parameters(), *last.und.mlp.named_parameters(),
                    *last.und.post_attn_norm.named_parameters(), *model.norm_und.named_parameters()]:
        assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in last.gen.parameters())
    model.zero_grad(set_to_none=True)
    # A CE loss on text that precedes every image: the generation expert is never involved.
    first_img = int(pack.latent_indexes.min())
    early = pack.ce_indexes < first_img
    assert early.any()
    F.cross_entropy(out.ce_logits[early], pack.ce_labels[early]).backward()
    for layer in model.layers:
        assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in layer.gen.parameters())
    assert model.layers[0].und.qkv.weight.grad.abs().sum() > 0


def test_dense_variant(debug_cfg, pack):
    cfg = dataclasses.replace(debug_cfg, mot=False)
    model = build_model(cfg)
    assert all(layer.gen is None for layer in model.layers) and model.norm_gen is None
    out = model(pack, generator=torch.Generator().manual_seed(0))
    _loss(out, pack).backward()
    assert model.layers[0].und.qkv.weight.grad.abs().sum() > 0
    mot = build_model(debug_cfg)
    n_dense = sum(p.numel() for p in model.parameters())
    n_mot = sum(p.numel() for p in mot.parameters())
    per_expert = sum(p.numel() for p in mot.layers[0].gen.parameters())
    assert n_mot - n_dense == debug_cfg.num_layers * per_expert + debug_cfg.hidden_size


def test_causal_and_sample_isolation(debug_cfg, make_pack, make_images):
    spec = [[("text", 6, True), ("gen", 0), ("text", 5, True)],
            [("text", 4, True), ("ctx", 1), ("text", 3, True)]]
    base = make_pack(spec, make_images(2), pad=3)
    model = build_model(debug_cfg)
    torch.nn.init.normal_(model.llm2vae.weight, std=0.02)
    noise = torch.randn(int(base.latent_noised.sum()), debug_cfg.latent_dim)
    ref = model(base, noise=noise)
    # 1) a later text token of sample 0 leaves earlier predictions unchanged
    j = 4                                                                 # text slot 4 = position 4
    b1 = dataclasses.replace(base, text_ids=base.text_ids.clone())
    b1.text_ids[j] = (b1.text_ids[j] + 1) % debug_cfg.vocab_size
    out = model(b1, noise=noise)
    before = base.ce_indexes < base.text_indexes[j]
    torch.testing.assert_close(out.ce_logits[before], ref.ce_logits[before], atol=0, rtol=0)
    assert not torch.allclose(out.ce_logits[~before], ref.ce_logits[~before])
    # 2) everything of sample 1 changed: sample 0's outputs are untouched
    s0_end = base.sample_lens[0]
    b2 = dataclasses.replace(base, text_ids=base.text_ids.clone(), images=base.images.clone())
    b2.text_ids[base.text_indexes >= s0_end] = 11
    b2.images[1] = -b2.images[1]
    out = model(b2, noise=noise)
    s0 = base.ce_indexes < s0_end
    torch.testing.assert_close(out.ce_logits[s0], ref.ce_logits[s0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.v_pred, ref.v_pred, atol=1e-6, rtol=0)  # only sample 0 has noise
    assert not torch.allclose(out.ce_logits[~s0], ref.ce_logits[~s0])
    # 3) the noised copy is invisible to later tokens: new noise changes v_pred only
    out = model(base, noise=torch.randn_like(noise))
    torch.testing.assert_close(out.ce_logits, ref.ce_logits, atol=1e-6, rtol=0)
    assert not torch.allclose(out.v_pred, ref.v_pred)


def test_image_tokens_share_one_rope_id(debug_cfg, make_pack, make_images):
    """A context image is a set to RoPE: reordering its tokens (each keeping its content and 2-D
    position) does not change what later text predicts, because all share one position id."""
    spec = [[("text", 5, True), ("ctx", 0), ("text", 5, True)]]
    base = make_pack(spec, make_images(1))
    assert base.position_ids[base.latent_indexes].unique().numel() == 1
    model = build_model(debug_cfg)
    perm = torch.randperm(base.latent_indexes.numel())
    shuffled = dataclasses.replace(base, latent_patch_ids=base.latent_patch_ids[perm])
    a, b = model(base).ce_logits, model(shuffled).ce_logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # Teeth: with distinct position ids inside the image the same shuffle does change the output.
    pos = base.position_ids.clone()
    pos[base.latent_indexes] += torch.arange(base.latent_indexes.numel())
    c = model(dataclasses.replace(base, position_ids=pos)).ce_logits
    d = model(dataclasses.replace(shuffled, position_ids=pos)).ce_logits
    assert not torch.allclose(c, d, atol=1e-5)
    # RoPE is relative: shifting every position of the sample changes nothing.
    e = model(dataclasses.replace(base, position_ids=base.position_ids + 7)).ce_logits
    torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


def test_kv_cache_prefix_matches_full_forward(debug_cfg, make_pack, make_images):
    """Prefill a text prefix with use_cache, then run a noised image against the cache: its
    velocity equals the one from the full pack (the inference pattern of a later issue)."""
    full = make_pack([[("text", 8, False), ("gen", 0)]], make_images(1))
    model = build_model(debug_cfg)
    torch.nn.init.normal_(model.llm2vae.weight, std=0.02)
    noise = torch.randn(int(full.latent_noised.sum()), debug_cfg.latent_dim)
    want = model(full, noise=noise).v_pred
    # prefix: the 8 text tokens
    prefix_ids = full.text_ids[:8]
    routing = Routing.build(torch.arange(8), torch.arange(0), 8, True)
    ctx = AttnContext.from_dense(torch.ones(8, 8, dtype=torch.bool).tril())
    _, cache = model.forward_hidden(model.embed_text(prefix_ids), torch.arange(8), routing, ctx,
                                    use_cache=True)
    # query: <|vision_start|> + noised latents + <|vision_end|>, all at position 8, full attention
    n_lat = int(full.latent_noised.sum())
    n = n_lat + 2
    clean, w = model.encode_latents(full)
    rows = full.latent_noised.nonzero().squeeze(1)
    t = full.latent_timesteps[rows]
    z = rf_interpolate(clean[rows], noise, t)
    lat = model.embed_latents(z, t, full.latent_patch_ids[rows], w)
    markers = model.embed_text(full.text_ids[8:10])
    hidden = model.embed(markers, torch.tensor([0, n - 1]), lat, torch.arange(1, n - 1), n)
    routing = Routing.build(torch.tensor([0, n - 1]), torch.arange(1, n - 1), n, True)
    ctx = AttnContext.from_dense(torch.ones(n, 8 + n, dtype=torch.bool))
    out, _ = model.forward_hidden(hidden, torch.full((n,), 8), routing, ctx, past_key_values=cache)
    got = model.predict_velocity(out[1:-1], z, t)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_activation_checkpointing_same_grads(debug_cfg, pack):
    torch.manual_seed(0)
    a = build_model(debug_cfg)
    b = build_model(debug_cfg)
    b.load_state_dict(a.state_dict())
    keys = set(b.state_dict())
    apply_activation_checkpointing(b)
    assert set(b.state_dict()) == keys                                     # wrapper prefix stripped
    noise = torch.randn(int(pack.latent_noised.sum()), debug_cfg.latent_dim)
    for m in (a, b):
        torch.nn.init.normal_(m.llm2vae.weight, generator=torch.Generator().manual_seed(1), std=0.02)
        _loss(m(pack, noise=noise), pack).backward()
    ga = dict(a.named_parameters())
    for name, p in b.named_parameters():
        name = name.replace("_checkpoint_wrapped_module.", "")
        torch.testing.assert_close(p.grad, ga[name].grad, atol=1e-6, rtol=1e-5)


def test_overfit_one_pack(debug_cfg, pack):
    model = build_model(debug_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    noise = torch.randn(int(pack.latent_noised.sum()), debug_cfg.latent_dim)
    losses = []
    for _ in range(40):
        loss = _loss(model(pack, noise=noise), pack)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_runs_on_packs_from_the_sequence_packer():
    """Integration with the real packer: images of different sizes padded to one canvas, CE on the
    modality switches, a padding sample; one training step's loss is finite and backpropagates."""
    from procpaint.model import model_config
    from procpaint.sequence.packing import Packer
    from procpaint.sequence.tokenizer import TextTokenizer, build_word_level
    from procpaint.sequence.types import ImageSegment, Sample, TextSegment

    words = "draw a red blue circle square the is too small".split()
    tok = TextTokenizer(build_word_level(words))
    img = lambda h, w: torch.rand(3, h, w) * 2 - 1
    samples = [
        Sample([TextSegment("draw a red circle", role="prompt"),
                TextSegment("<ins>draw a red circle</ins>", loss=True, role="plan"),
                ImageSegment(img(8, 8), loss=True), TextSegment("the circle is too small", loss=True)],
               eos=True),
        Sample([TextSegment("draw a blue square"), ImageSegment(img(4, 6)),
                TextSegment("the square is small", loss=True)]),
    ]
    cfg = model_config("debug", vocab_size=len(tok.tok.get_vocab()), attn_backend="sdpa")
    packer = Packer(tok, pixels_per_token=cfg.pixels_per_token, max_tokens=128, overflow_buffer=0)
    packs = [b for s in samples for b in packer.add(s)] + packer.flush()
    model = build_model(cfg)
    for batch in packs:
        out = model(batch, generator=torch.Generator().manual_seed(0))
        loss = _loss(out, batch) if out.v_pred.numel() else F.cross_entropy(out.ce_logits, batch.ce_labels)
        assert torch.isfinite(loss)
        loss.backward()
    assert model.embed_tokens.weight.grad is not None


def test_clean_prediction_gives_exact_velocity(debug_cfg):
    """prediction="clean": the head's x0 turns into the velocity that moves z_t exactly onto x0."""
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(debug_cfg, prediction="clean"))
    torch.nn.init.normal_(model.llm2vae.weight, std=0.05)
    hidden = torch.randn(6, debug_cfg.hidden_size)
    x0 = model.llm2vae(hidden)
    noise = torch.randn_like(x0)
    t = torch.tensor([0.05, 0.1, 0.3, 0.5, 0.9, 1.0])
    z = t[:, None] * noise + (1 - t[:, None]) * x0
    v = model.predict_velocity(hidden, z, t)
    torch.testing.assert_close(v, noise - x0, atol=1e-5, rtol=1e-5)
    # one Euler step to t = 0 lands on the predicted clean latent (the sampler's last step)
    torch.testing.assert_close(z - t[:, None] * v, x0, atol=1e-5, rtol=1e-5)
    # below prediction_t_min the division is clamped: finite even at t = 0
    assert torch.isfinite(model.predict_velocity(hidden, x0, torch.zeros(6))).all()
    with pytest.raises(ValueError, match="model.prediction"):
        dataclasses.replace(debug_cfg, prediction="eps")


def test_generation_only_call_takes_no_permutation_and_matches_the_routed_path(debug_cfg):
    """A call of noised latents only (a cached flow step) runs the generation expert on the rows as
    they are: no permutation, no empty understanding-expert ops, the same bits as the routed path."""
    model = build_model(debug_cfg)
    n = 12
    hidden = torch.randn(n, debug_cfg.hidden_size)
    fast = Routing.build(torch.arange(0), torch.arange(n), n, True)
    assert (fast.num_und, fast.num_gen, fast.to_routed, fast.to_seq) == (0, n, None, None)
    calls = []
    fast.apply(hidden, lambda x: calls.append("und") or x, lambda x: calls.append("gen") or x)
    assert calls == ["gen"]
    routed = Routing(0, n, torch.arange(n), torch.arange(n))              # the general path
    ctx = AttnContext.from_dense(torch.ones(n, n, dtype=torch.bool))
    pos = torch.full((n,), 3)
    a, _ = model.forward_hidden(hidden, pos, fast, ctx)
    b, _ = model.forward_hidden(hidden, pos, routed, ctx)
    assert torch.equal(a, b)
