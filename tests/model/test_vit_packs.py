"""The model on packs that hold ViT splits (model.vit, issue 13): embedding, routing, gradients, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from procpaint.model import build_model, model_config
from procpaint.model.layers import Routing
from procpaint.sequence.packing import Packer
from procpaint.sequence.plan import ViTSplits
from procpaint.sequence.tokenizer import TextTokenizer, build_word_level
from procpaint.sequence.types import ImageSegment, Sample, TextSegment

WORDS = "draw a red blue circle square the is too small".split()
TOK = TextTokenizer(build_word_level(WORDS))


def _cfg(**kw):
    return model_config("debug-vit", vocab_size=TOK.vocab_size, attn_backend="sdpa", patch_size=4, **kw)


def _pack(cfg, seed=0, vit=True):
    g = torch.Generator().manual_seed(seed)
    img = lambda h, w: torch.rand(3, h, w, generator=g) * 2 - 1
    samples = [
        Sample([TextSegment("draw a red circle", role="prompt"),
                TextSegment("<ins>draw a red circle</ins>", loss=True, role="plan"),
                ImageSegment(img(8, 8), loss=True), TextSegment("the circle is too small", loss=True)],
               eos=True),
        Sample([TextSegment("draw a blue square"), ImageSegment(img(8, 12)),
                TextSegment("the square is small", loss=True)]),
    ]
    packer = Packer(TOK, pixels_per_token=cfg.pixels_per_token, max_tokens=160,
                    vit=ViTSplits.from_model_config(cfg) if vit else None)
    (b,) = list(packer.pack_stream(samples))
    return b


def _loss(out, batch):
    return F.cross_entropy(out.ce_logits, batch.ce_labels) + (out.v_pred - (out.noise - out.clean)).pow(2).mean()


def test_forward_backward_reaches_the_vit_and_connector():
    torch.manual_seed(0)
    cfg = _cfg()
    model = build_model(cfg)
    torch.nn.init.normal_(model.llm2vae.weight, std=0.05)
    b = _pack(cfg)
    assert b.vit_seqlens == [4, 6]                       # 8x8 and 8x12 px at 4 px patches
    out = model(b, generator=torch.Generator().manual_seed(0))
    loss = _loss(out, b)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith(("vit.", "connector.")):
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_vit_tokens_take_the_understanding_expert_at_their_positions():
    """The ViT embeddings sit at vit_indexes, and routing puts those rows on the understanding side."""
    cfg = _cfg()
    model = build_model(cfg)
    b = _pack(cfg)
    routing = Routing.build(b.und_indexes, b.gen_indexes, b.seq_len, cfg.mot)
    und_rows = set(routing.to_routed[:routing.num_und].tolist())
    assert set(b.vit_indexes.tolist()) <= und_rows
    assert not set(b.vit_indexes.tolist()) & set(routing.to_routed[routing.num_und:].tolist())
    seen = {}
    hook = model.embed.__func__

    def spy(self, *args, **kw):
        seen["x"] = hook(self, *args, **kw)
        return seen["x"]

    model.embed = spy.__get__(model)
    model(b, generator=torch.Generator().manual_seed(0))
    vit = model.embed_vit(b.vit_patches, b.vit_position_ids, b.vit_seqlens)
    torch.testing.assert_close(seen["x"][b.vit_indexes], vit)


def test_context_pixels_reach_later_text_through_the_vit():
    """Changing only the ViT patches of a pack changes the logits after the image (not before it)."""
    torch.manual_seed(0)
    cfg = _cfg()
    model = build_model(cfg).eval()
    b = _pack(cfg)
    with torch.no_grad():
        base = model(b, generator=torch.Generator().manual_seed(0)).ce_logits
        b.vit_patches = -b.vit_patches
        other = model(b, generator=torch.Generator().manual_seed(0)).ce_logits
    first_vit = int(b.vit_indexes.min())
    before = b.ce_indexes < first_vit
    assert before.any() and (~before).any()
    torch.testing.assert_close(other[before], base[before])
    assert not torch.allclose(other[~before], base[~before])


def test_packs_and_models_must_agree_on_the_vit():
    cfg = _cfg()
    with pytest.raises(ValueError, match="model.vit=False"):
        build_model(_cfg(vit=False))(_pack(cfg))
    wrong = _pack(_cfg(vit_patch_size=2))
    with pytest.raises(ValueError, match="vit_patch_size"):
        build_model(cfg)(wrong)
    # a vit model reads a pack without ViT splits as before (the VAE path alone)
    b = _pack(cfg, vit=False)
    assert b.vit_indexes.numel() == 0
    assert torch.isfinite(build_model(cfg)(b).ce_logits).all()


def test_training_flops_count_the_vit_encoder_per_image():
    from procpaint.model.factory import vit_flops_per_patch
    from procpaint.training.module import pack_flops

    cfg = _cfg()
    with_vit, without = _pack(cfg), _pack(cfg, vit=False)
    assert with_vit.vit_seqlens and not without.vit_seqlens
    # the ViT pack also counts each image's encoder pass: more than the same tokens as plain text
    base = pack_flops(cfg, with_vit) - sum(k * vit_flops_per_patch(cfg, k) for k in with_vit.vit_seqlens)
    assert base > 0 and pack_flops(cfg, with_vit) > base
    # an encoder 4x wider costs more per patch: the count reads the ViT's own sizes
    wide = _cfg(vit_hidden_size=4 * cfg.vit_hidden_size, vit_intermediate_size=4 * cfg.vit_intermediate_size)
    assert pack_flops(wide, with_vit) > pack_flops(cfg, with_vit)
    assert pack_flops(wide, without) == pack_flops(cfg, without)      # no ViT tokens: nothing changes
