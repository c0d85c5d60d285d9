"""The ViT understanding path: a tiny ``transformers.SiglipVisionModel`` (random weights, built from a
config) mapped into procpaint's encoder gives SigLIP's features, for full-size images and for
NaViT-packed images of other sizes (BAGEL's extrapolated position ids, read through SigLIP's own
modules). Tolerance: twice torch's own fp32 error against an fp64 run of the same SigLIP. Plus the
model option: off changes nothing, on builds ``vit``/``connector``/``vit_pos_embed`` with the closed-form
parameter count, and ``embed_vit`` is connector + BAGEL's 2-D sin-cos table."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from procpaint.model import build_model, expected_num_parameters, model_config, num_parameters
from procpaint.model.bagel_io import BagelFormatError, load_siglip_state_dict
from procpaint.model.factory import flops_per_token, vit_flops_per_patch, vit_parameters
from procpaint.model.vit import vit_patches, vit_position_ids

transformers = pytest.importorskip("transformers")

W, LAYERS, HEADS, INTER, P, SIDE = 32, 2, 4, 48, 4, 5      # SigLIP image_size = SIDE * P = 20 px


def tiny_siglip(seed: int = 0):
    cfg = transformers.SiglipVisionConfig(hidden_size=W, intermediate_size=INTER, num_hidden_layers=LAYERS,
                                          num_attention_heads=HEADS, image_size=SIDE * P, patch_size=P,
                                          layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
                                          attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.SiglipVisionModel(cfg).eval()
    with torch.no_grad():                     # non-trivial biases and norms (init has 0 / 1)
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def vit_cfg(**kw):
    base = dict(vocab_size=40, vit=True, vit_hidden_size=W, vit_num_layers=LAYERS, vit_num_heads=HEADS,
                vit_intermediate_size=INTER, vit_patch_size=P, vit_max_patches_per_side=SIDE)
    return model_config("debug", **{**base, **kw})


def ours_for(hf):
    model = build_model(vit_cfg()).eval()
    load_siglip_state_dict(model, hf.state_dict())             # its pooling head is left out
    return model


def hf_features(hf, images: list[torch.Tensor], dtype) -> torch.Tensor:
    """SigLIP's features (N, W) of each image in turn: conv patches + position_embedding at BAGEL's
    extrapolated ids, SigLIP's encoder and post-LayerNorm (for full-size images, its own forward)."""
    hf = hf.to(dtype)
    vm = getattr(hf, "vision_model", hf)
    out = []
    with torch.no_grad():
        for im in images:
            x = im[None].to(dtype)
            h, w = x.shape[-2] // P, x.shape[-1] // P
            if (h, w) == (SIDE, SIDE):
                out.append(hf(pixel_values=x).last_hidden_state[0].float())
                continue
            emb = vm.embeddings.patch_embedding(x).flatten(2).transpose(1, 2)        # (1, h*w, W)
            emb = emb + vm.embeddings.position_embedding(vit_position_ids(h, w, SIDE))[None]
            hidden = vm.encoder(inputs_embeds=emb).last_hidden_state
            out.append(vm.post_layernorm(hidden)[0].float())
    return torch.cat(out)


def ours_features(model, images: list[torch.Tensor]) -> torch.Tensor:
    """One packed (NaViT) call over images of different sizes."""
    patches, ids, lens = [], [], []
    for im in images:
        h, w = im.shape[-2] // P, im.shape[-1] // P
        patches.append(vit_patches(im[None], P))
        ids.append(vit_position_ids(h, w, SIDE))
        lens.append(h * w)
    with torch.no_grad():
        return model.vit(torch.cat(patches), torch.cat(ids), lens)


def assert_close(got, hf, images):
    ref64 = hf_features(hf, images, torch.float64)
    ref32 = hf_features(hf, images, torch.float32)
    err_torch = (ref32 - ref64).abs().max()
    err_ours = (got - ref64).abs().max()
    assert err_ours <= 2 * err_torch + 1e-6, (err_ours, err_torch)


def test_siglip_features_match_full_size():
    hf = tiny_siglip()
    model = ours_for(hf)
    images = [torch.rand(3, SIDE * P, SIDE * P) * 2 - 1 for _ in range(3)]
    with torch.no_grad():
        got = model.vit.encode_images(torch.stack(images))                 # (3, SIDE^2, W)
    assert got.shape == (3, SIDE * SIDE, W)
    assert_close(got.flatten(0, 1), hf, images)


def test_siglip_features_match_navit_packed():
    """Images of other sizes in one packed call: each attends to itself only and reads the top-left
    corner of the position table (ragged lengths, so the padded attention path runs)."""
    hf = tiny_siglip(1)
    model = ours_for(hf)
    sizes = [(SIDE, SIDE), (2, 3), (4, 1), (1, 1), (3, 5)]
    images = [torch.rand(3, h * P, w * P) * 2 - 1 for h, w in sizes]
    got = ours_features(model, images)
    assert got.shape == (sum(h * w for h, w in sizes), W)
    assert_close(got, hf, images)
    alone = torch.cat([ours_features(model, [im]) for im in images])      # packing changes nothing
    torch.testing.assert_close(got, alone, rtol=0, atol=1e-5)


def test_siglip_mapping_errors():
    hf = tiny_siglip()
    with pytest.raises(BagelFormatError, match="no ViT path"):
        load_siglip_state_dict(build_model(model_config("debug", vocab_size=40)), hf.state_dict())
    with pytest.raises(BagelFormatError, match=r"missing key\(s\): .*encoder\.layers\.2\."):
        load_siglip_state_dict(build_model(vit_cfg(vit_num_layers=LAYERS + 1)), hf.state_dict())
    with pytest.raises(BagelFormatError, match=r"patch_embedding.weight \(32, 48\) vs model \(32, 75\)"):
        load_siglip_state_dict(build_model(vit_cfg(vit_patch_size=P + 1)), hf.state_dict())


def test_vit_option_off_changes_nothing_on_builds_it():
    off = build_model(model_config("debug", vocab_size=40))
    keys = off.state_dict().keys()
    assert off.vit is None and off.connector is None and off.vit_pos_embed is None
    assert not any(k.startswith(("vit", "connector")) for k in keys)
    torch.manual_seed(0)
    a = build_model(model_config("debug", vocab_size=40)).state_dict()
    torch.manual_seed(0)
    b = build_model(dataclasses.replace(model_config("debug", vocab_size=40), vit_hidden_size=8)).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)   # same draws too

    cfg = vit_cfg()
    on = build_model(cfg)
    assert num_parameters(on) == expected_num_parameters(cfg)
    assert num_parameters(on) - num_parameters(off) == vit_parameters(cfg)
    assert not list(on.vit_pos_embed.parameters())             # fixed table, computed on the fly
    assert on.connector.fc1.weight.shape == (cfg.hidden_size, W)
    assert flops_per_token(cfg, 100) == flops_per_token(model_config("debug", vocab_size=40), 100)


def test_embed_vit_is_connector_plus_sincos_table():
    model = ours_for(tiny_siglip())
    h, w = 2, 3
    im = torch.rand(1, 3, h * P, w * P) * 2 - 1
    ids = vit_position_ids(h, w, SIDE)
    with torch.no_grad():
        got = model.embed_vit(vit_patches(im, P), ids, [h * w])
        feats = model.vit(vit_patches(im, P), ids, [h * w])
        want = model.connector(feats) + model.vit_pos_embed.table()[ids]
    assert got.shape == (h * w, model.cfg.hidden_size)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="vit_max_patches_per_side=5"):
        vit_position_ids(SIDE + 1, 1, SIDE)


def test_bagel_7b_vit_shapes_on_meta():
    """SigLIP-so400m as BAGEL runs it: 26 layers of width 1152, 14 px patches, a 70 x 70 table;
    ~0.4B parameters with the connector, besides the 14.2B of the two experts."""
    cfg = model_config("bagel-7b")
    model = build_model(cfg, device="meta")
    assert len(model.vit.layers) == 26 and model.vit.patch_embed.weight.shape == (1152, 14 * 14 * 3)
    assert model.vit.pos_embed.weight.shape == (70 * 70, 1152)
    assert model.connector.fc2.weight.shape == (3584, 3584)
    assert num_parameters(model.vit) + num_parameters(model.connector) == vit_parameters(cfg)
    assert 0.41e9 < vit_parameters(cfg) < 0.43e9
    # per patch: 6 x the matmul weights (all but the position table, biases, norms), plus attention
    # over the image's own patches (4900 at 980 px: ~40% more)
    f0, f = vit_flops_per_patch(cfg, 0), vit_flops_per_patch(cfg, 4900)
    assert 6 * 0.40e9 < f0 < 6 * vit_parameters(cfg)
    assert f - f0 == 6 * 2 * 26 * 1152 * 4900
    assert vit_flops_per_patch(cfg, 4900, training=False) * 3 == f
