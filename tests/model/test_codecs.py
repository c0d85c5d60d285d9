"""Latent codecs: exact pixel round trip and token layout; a tiny random AutoencoderKL when
diffusers is installed."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from procpaint.model import PixelCodec, VAECodec, build_codec, build_model, measure_latent_stats, model_config
from procpaint.model.codecs import patchify, unpatchify


@pytest.mark.parametrize("p,hw", [(1, (3, 5)), (2, (8, 6)), (4, (16, 12))])
def test_pixel_round_trip_exact(p, hw):
    images = torch.rand(3, 3, *hw) * 2 - 1
    codec = PixelCodec(p)
    tokens = codec.encode(images)
    h, w = codec.grid(*hw)
    assert tokens.shape == (3, h * w, 3 * p * p)
    assert torch.equal(codec.decode(tokens, h, w), images)


def test_pixel_token_layout_is_row_major_dy_dx_c():
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    tokens = PixelCodec(2).encode(images)                                   # grid 2 x 3
    i, r, c = 1, 1, 2                                                       # image 1, token row 1, col 2
    tok = tokens[i, r * 3 + c].reshape(2, 2, 3)                             # (dy, dx, channel)
    for dy in range(2):
        for dx in range(2):
            assert torch.equal(tok[dy, dx], images[i, :, 2 * r + dy, 2 * c + dx])


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="not divisible by 2 pixels"):
        PixelCodec(2).encode(torch.zeros(1, 3, 5, 4))
    with pytest.raises(ValueError, match="patch_size=2"):
        patchify(torch.zeros(1, 3, 5, 4), 2)
    with pytest.raises(ValueError, match="grid"):
        unpatchify(torch.zeros(1, 5, 12), 2, 3, 2)
    with pytest.raises(ValueError, match="latent_channels=3"):
        build_codec(dataclasses.replace(model_config("debug"), latent_channels=4))


def test_vae_placeholder_without_path_raises_on_use():
    codec = build_codec(model_config("bagel-7b"))
    assert isinstance(codec, VAECodec) and codec.latent_dim == 64 and codec.pixels_per_token == 16
    with pytest.raises(RuntimeError, match="model.vae_path"):
        codec.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(FileNotFoundError, match="config.json"):
        VAECodec("/nonexistent/vae", 16, 8, 2)


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="diffusers not installed")
def test_tiny_autoencoder_kl(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=16,
                        scaling_factor=0.5, shift_factor=0.1)
    vae.save_pretrained(tmp_path / "vae")
    cfg = model_config("debug", vocab_size=16, codec="vae", vae_path=str(tmp_path / "vae"), latent_channels=4,
                       latent_downsample=2, patch_size=2)
    codec = build_codec(cfg)
    assert codec.scale == 0.5 and codec.shift == pytest.approx(0.1)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    tokens = codec.encode(images)
    assert tokens.shape == (2, 16, 16)                                      # 4x4 tokens of 4*2*2 channels
    with torch.no_grad():
        z = vae.encode(images).latent_dist.mode()
    torch.testing.assert_close(tokens, patchify((z - 0.1) * 0.5, 2))
    out = codec.decode(tokens, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(out, vae.decode(z).sample, atol=1e-5, rtol=1e-5)
    # The VAE is frozen inside the model and stays in eval mode.
    model = build_model(cfg).train()
    assert not model.codec.vae.training
    assert not any(p.requires_grad for p in model.codec.vae.parameters())
    bad = dataclasses.replace(cfg, latent_channels=16)
    with pytest.raises(ValueError, match="latent_channels=4"):
        build_codec(bad)


def test_pixel_codec_with_statistics_standardises_and_round_trips():
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(8, 3, 16, 16, generator=g) * 0.4 - 0.6)           # off-centre, small spread
    images[:, 1] += 0.3                                                     # channels differ
    codec = PixelCodec(4)
    mean, std = measure_latent_stats(codec, images)
    assert codec.latent_mean is None                                        # measuring leaves it alone
    assert len(mean) == len(std) == 3 and mean[1] > mean[0] + 0.2
    codec.set_stats(mean, std)
    tokens = codec.encode(images)
    z = tokens.reshape(-1, 3)                                               # channels run last
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(codec.decode(tokens, 4, 4), images, atol=1e-6, rtol=0)


def test_statistics_in_the_model_config_reach_the_codec_and_are_checked():
    mc = model_config("debug", vocab_size=64, latent_mean=[0.1, 0.2, 0.3], latent_std=[0.5, 0.5, 0.5])
    assert mc.latent_mean == (0.1, 0.2, 0.3)                                # JSON lists become tuples
    codec = build_codec(mc)
    assert codec.latent_mean == mc.latent_mean and codec.latent_std == mc.latent_std
    with pytest.raises(ValueError, match="latent_mean has 2 values"):
        model_config("debug", vocab_size=64, latent_mean=[0.0, 0.0], latent_std=[1.0, 1.0])
    with pytest.raises(ValueError, match="together"):
        model_config("debug", vocab_size=64, latent_mean=[0.0] * 3)
    with pytest.raises(ValueError, match="positive"):
        model_config("debug", vocab_size=64, latent_mean=[0.0] * 3, latent_std=[1.0, 0.0, 1.0])


def _flat_shapes(n: int = 8, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Grey canvases with one flat-coloured rectangle each: the painting world's statistics."""
    g = torch.Generator().manual_seed(seed)
    images = torch.full((n, 3, size, size), 0.1)
    for k in range(n):
        y, x = torch.randint(0, size - 6, (2,), generator=g).tolist()
        images[k, :, y:y + 6, x:x + 5] = torch.rand(3, 1, 1, generator=g) * 2 - 1
    return images


def test_dct_basis_is_orthonormal_and_lowest_frequencies_come_first():
    from procpaint.model.codecs import dct_frequencies, dct_matrix

    d = dct_matrix(8)
    torch.testing.assert_close(d @ d.T, torch.eye(8, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.allclose(d[0], torch.full((8,), 8 ** -0.5, dtype=torch.float64))    # DC is the mean
    freqs = dct_frequencies(4, 16)
    assert freqs[0] == (0, 0) and sorted(freqs) == [(a, b) for a in range(4) for b in range(4)]
    assert [a + b for a, b in freqs] == sorted(a + b for a, b in freqs)


def test_dct_codec_full_round_trip_is_exact_and_statistics_standardise_every_coefficient():
    images = _flat_shapes()
    mc = model_config("debug", vocab_size=64, patch_size=4, codec="dct")
    assert mc.latent_dim == 48 and mc.stat_channels == 48
    codec = build_codec(mc)
    mean, std = measure_latent_stats(codec, images)
    assert len(mean) == len(std) == 48
    assert std[0] > 5 * min(std)                  # the DC coefficient carries far more energy
    codec = build_codec(dataclasses.replace(mc, latent_mean=mean, latent_std=std))
    tokens = codec.encode(images)
    assert tokens.shape == (8, 16, 48)
    z = tokens.reshape(-1, 48)
    torch.testing.assert_close(z.mean(0), torch.zeros(48), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(0)[std_big := torch.tensor(std) > 1e-3],
                               torch.ones(int(std_big.sum())), atol=1e-3, rtol=0)
    torch.testing.assert_close(codec.decode(tokens, 4, 4), images, atol=1e-5, rtol=0)
    # the first channel of a token is the DC coefficient of red: the patch mean (orthonormal: x p)
    raw = build_codec(mc).encode(images)
    torch.testing.assert_close(raw[:, 0, 0], images[:, 0, :4, :4].mean((1, 2)) * 4, atol=1e-5, rtol=0)


def test_dct_codec_truncation_keeps_the_low_frequencies():
    images = _flat_shapes()
    full = build_codec(model_config("debug", vocab_size=64, patch_size=4, codec="dct"))
    low = build_codec(model_config("debug", vocab_size=64, patch_size=4, codec="dct", dct_keep=6))
    assert low.latent_dim == 18
    torch.testing.assert_close(low.encode(images), full.encode(images)[..., :18])
    rec = low.decode(low.encode(images), 4, 4)
    err = (rec - images).pow(2).mean()
    assert 0 < err < 0.1 * images.var()            # least-squares from 6 of 16 frequencies
    # the truncated reconstruction is the projection: encoding it again changes nothing
    torch.testing.assert_close(low.encode(rec), low.encode(images), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="dct_keep"):
        model_config("debug", vocab_size=64, patch_size=4, codec="dct", dct_keep=17)
    with pytest.raises(ValueError, match="48 channels"):
        model_config("debug", vocab_size=64, patch_size=4, codec="dct", latent_mean=[0.0] * 3,
                     latent_std=[1.0] * 3)


def test_a_model_trains_on_dct_latents():
    mc = model_config("debug", vocab_size=64, patch_size=4, codec="dct", dct_keep=6)
    model = build_model(mc)
    assert model.codec.latent_dim == 18 and model.llm2vae.out_features == 18
