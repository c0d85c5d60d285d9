"""The non-transformer files of a BAGEL-format directory: FLUX's ``ae.safetensors`` as the VAE codec,
and the Qwen2 ``tokenizer.json`` with procpaint's special tokens (see :mod:`procpaint.model.bagel_io`).
transformers / diffusers are imported only here and only when used (``pip install 'procpaint[bagel]'``).
"""

from __future__ import annotations

from pathlib import Path

from procpaint.model.bagel_io import BagelFormatError, _short

FLUX_AE_CONFIG = dict(                  # FLUX.1 autoencoder as a diffusers AutoencoderKL
    in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2, norm_num_groups=32, scaling_factor=0.3611, shift_factor=0.1159,
    use_quant_conv=False, use_post_quant_conv=False)


def bagel_tokenizer(path: str | Path):
    """The directory's Qwen2 ``tokenizer.json`` with procpaint's special tokens added, ready for
    :class:`~procpaint.sequence.tokenizer.TextTokenizer` (save it and point ``data.tokenizer`` at it).

    Qwen2 already has ``<|vision_start|>`` / ``<|vision_end|>`` (BAGEL's image markers), which keep
    their ids; ``<pad>``, ``<eos>`` and the plan / refine tags are appended after its vocabulary,
    inside the checkpoint's padded embedding (151,665 tokens, 152,064 rows for BAGEL-7B).
    """
    from tokenizers import Tokenizer

    from procpaint.sequence.tokenizer import SPECIAL_TOKENS, UNK

    f = Path(path) / "tokenizer.json"
    if not f.is_file():
        raise BagelFormatError(f"{path}: no tokenizer.json (BAGEL ships the Qwen2 tokenizer beside "
                               "the weights)")
    tok = Tokenizer.from_file(str(f))
    tok.add_special_tokens([t for t in SPECIAL_TOKENS if t != UNK and tok.token_to_id(t) is None])
    return tok


def load_flux_autoencoder(path: str | Path, **config):
    """FLUX's ``ae.safetensors`` (its original key layout) as a frozen diffusers ``AutoencoderKL``.

    ``config`` overrides :data:`FLUX_AE_CONFIG` (tests build tiny autoencoders)."""
    try:
        from diffusers import AutoencoderKL
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
        from safetensors.torch import load_file
    except ImportError as e:
        raise ImportError("loading ae.safetensors needs diffusers: pip install 'procpaint[bagel]'") from e
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no FLUX autoencoder there (expected ae.safetensors)")
    vae = AutoencoderKL(**{**FLUX_AE_CONFIG, **config})
    sd = load_file(str(path))
    converted = convert_ldm_vae_checkpoint(sd, vae.config)
    missing, unexpected = vae.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise BagelFormatError(f"{path}: not a FLUX autoencoder: {len(missing)} missing key(s) "
                               f"[{_short(missing, 4)}], {len(unexpected)} unexpected key(s) "
                               f"[{_short(unexpected, 4)}]")
    return vae.requires_grad_(False).eval()


def attach_flux_autoencoder(codec, path: str | Path, **config) -> None:
    """Give an unloaded :class:`~procpaint.model.codecs.VAECodec` the FLUX autoencoder at ``path``
    (what ``VAECodec`` does for a diffusers directory; FLUX's own file needs the key conversion)."""
    vae = load_flux_autoencoder(path, **config)
    c = vae.config
    downsample = 2 ** (len(c.block_out_channels) - 1)
    if c.latent_channels != codec.latent_channels or downsample * codec.patch_size != codec.pixels_per_token:
        raise BagelFormatError(f"{path}: autoencoder has latent_channels={c.latent_channels}, downsample="
                               f"{downsample}; the model has model.latent_channels={codec.latent_channels}, "
                               f"model.latent_downsample={codec.pixels_per_token // codec.patch_size}")
    codec.vae, codec.scale, codec.shift = vae, float(c.scaling_factor), float(c.shift_factor or 0.0)
