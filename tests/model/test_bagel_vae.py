"""FLUX's autoencoder layout: a tiny diffusers ``AutoencoderKL`` with FLUX's latent layout (16 channels,
scaling 0.3611, shift 0.1159, no quant convs). procpaint's VAE codec gives the latents and decoded
images of diffusers' own calls, and FLUX's ``ae.safetensors`` key layout loads into the same model."""

from __future__ import annotations

import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from safetensors.torch import save_file  # noqa: E402

from procpaint.model.bagel_assets import FLUX_AE_CONFIG, attach_flux_autoencoder, load_flux_autoencoder  # noqa: E402
from procpaint.model.codecs import VAECodec, patchify, unpatchify  # noqa: E402

TINY = dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=4)


def tiny_vae(seed: int = 0):
    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(**{**FLUX_AE_CONFIG, **TINY}).eval()


def to_flux_layout(sd: dict, n_up: int) -> dict:
    """diffusers AutoencoderKL keys -> FLUX's original (LDM) ae.safetensors keys (the test-side spec)."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"decoder\.up_blocks\.(\d+)\.", k)
        if m:                                                   # LDM counts decoder blocks bottom-up
            k = k.replace(f"up_blocks.{m[1]}.", f"up.{n_up - 1 - int(m[1])}.")
        k = re.sub(r"down_blocks\.(\d+)\.", r"down.\1.", k)
        for a, b in (("resnets.", "block."), ("downsamplers.0.", "downsample."),
                     ("upsamplers.0.", "upsample."), ("conv_shortcut", "nin_shortcut"),
                     ("conv_norm_out", "norm_out"),
                     ("mid_block.attentions.0.", "mid.attn_1."), ("mid_block.block.0.", "mid.block_1."),
                     ("mid_block.block.1.", "mid.block_2.")):
            k = k.replace(a, b)
        for a, b in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                     ("to_out.0", "proj_out")):
            k = k.replace(f"attn_1.{a}.", f"attn_1.{b}.")
        if ".attn_1." in k and k.endswith("weight") and v.ndim == 2:   # 1x1 convs in FLUX's attention
            v = v[:, :, None, None]
        out[k] = v.contiguous()
    return out


def reference(vae, images):
    with torch.no_grad():
        z = vae.encode(images).latent_dist.mode()
        tokens = patchify((z - 0.1159) * 0.3611, 2)
        decoded = vae.decode(unpatchify(tokens, 4, 4, 2) / 0.3611 + 0.1159).sample
    return tokens, decoded


def test_codec_matches_diffusers(tmp_path):
    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    codec = VAECodec(tmp_path / "vae", latent_channels=16, downsample=2, patch_size=2)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    want_tokens, want_images = reference(vae, images)
    tokens = codec.encode(images)
    assert tokens.shape == (2, 16, 64)
    torch.testing.assert_close(tokens, want_tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(codec.decode(tokens, 4, 4), want_images, rtol=0, atol=1e-5)


def test_flux_ae_safetensors_layout(tmp_path):
    vae = tiny_vae(1)
    save_file(to_flux_layout(vae.state_dict(), n_up=2), str(tmp_path / "ae.safetensors"))
    loaded = load_flux_autoencoder(tmp_path / "ae.safetensors", **TINY)
    a, b = vae.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    codec = VAECodec(None, latent_channels=16, downsample=2, patch_size=2)
    attach_flux_autoencoder(codec, tmp_path / "ae.safetensors", **TINY)
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(codec.encode(images), reference(vae, images)[0], rtol=0, atol=1e-6)

    save_file({"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a FLUX autoencoder: .* missing key"):
        load_flux_autoencoder(tmp_path / "other.safetensors", **TINY)
