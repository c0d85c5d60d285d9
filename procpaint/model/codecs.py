"""Latent codecs: images <-> latent tokens.

A codec turns a batch of images (I, 3, H, W) in [-1, 1] into latent tokens (I, h*w, D), one token per
``patch_size x patch_size`` latent pixels in row-major order (the order of
``PackedBatch.latent_patch_ids``), and back. Inside a token the channels run (dy, dx, c) —
BAGEL's ``patchify`` layout, so its 2x2x16 = 64-channel tokens line up with ours.

- ``pixel``: the latent image *is* the image (latent_channels = 3, no downsampling), standardised per
  channel with the training set's statistics; a token is a p x p pixel patch, D = 3 p^2. Exact round
  trip; the default for the procedural world.

Every codec applies ``ModelConfig.latent_mean`` / ``latent_std`` (per latent channel, measured on
the training data by :func:`measure_latent_stats` over the training images) when they are set: raw pixels
of the painting world have std ~0.17 around a background of 0.18, which against unit-variance noise
acts like a ~6x timestep shift toward noise. The statistics live in the config, so they travel with
every checkpoint and export; None (old checkpoints) is the identity those were trained with.
- ``dct``: the pixel patch in the orthonormal 2-D DCT-II basis (per colour channel), the
  ``dct_keep`` lowest frequencies kept (all of them: an exact round trip), and every coefficient
  standardised with its own training-set statistics. Pixel standardisation gives every pixel the
  same scale, so an object's colour, shared by hundreds of values, stays visible through the noise
  up to t ~ 0.98 while its edges drown early; per-frequency standardisation makes the colour (the DC
  coefficient) and the detail (the rest) meet the noise at comparable times, the way a VAE's latents
  do. Lowest frequencies first also shrinks the token (64 px, patch 8, 21 kept: 63 channels
  instead of 192, 97% of the variance; ``benchmarks/results/2026-12-03-recipe-cpu.md``).
- ``vae``: a diffusers-compatible ``AutoencoderKL`` from a local directory (nothing is downloaded),
  frozen; latents are normalised as ``(z - shift_factor) * scaling_factor`` with the factors from
  the VAE's own config (FLUX: 0.1159 / 0.3611). diffusers is imported only when one is loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from procpaint.model.config import ModelConfig


def patchify(latent: torch.Tensor, p: int) -> torch.Tensor:
    """(I, C, Hl, Wl) -> (I, (Hl/p) * (Wl/p), p * p * C), channels ordered (dy, dx, c)."""
    n, c, hl, wl = latent.shape
    if hl % p or wl % p:
        raise ValueError(f"latent size {hl}x{wl} is not divisible by model.patch_size={p}")
    h, w = hl // p, wl // p
    x = latent.reshape(n, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1)        # (I, h, w, p, p, C)
    return x.reshape(n, h * w, p * p * c)


def unpatchify(tokens: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """(I, h * w, p * p * C) -> (I, C, h * p, w * p); inverse of :func:`patchify`."""
    n, hw, d = tokens.shape
    if hw != h * w or d % (p * p):
        raise ValueError(f"tokens of shape {tuple(tokens.shape)} do not form a {h}x{w} grid of "
                         f"{p}x{p} patches")
    c = d // (p * p)
    x = tokens.reshape(n, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)          # (I, C, h, p, w, p)
    return x.reshape(n, c, h * p, w * p)


class LatentCodec(nn.Module):
    """Interface: ``encode(images) -> (I, h*w, D)``, ``decode(tokens, h, w) -> (I, 3, H, W)``."""

    latent_dim: int
    pixels_per_token: int
    stat_channels: int = 3            # entries of latent_mean / latent_std
    latent_mean: tuple[float, ...] | None = None
    latent_std: tuple[float, ...] | None = None

    def set_stats(self, mean, std) -> None:
        """Per-channel standardisation of the latent image (None, None: identity)."""
        self.latent_mean = None if mean is None else tuple(float(m) for m in mean)
        self.latent_std = None if std is None else tuple(float(s) for s in std)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """(I, C, Hl, Wl) latent image -> standardised per channel."""
        if self.latent_mean is None:
            return z
        mean = z.new_tensor(self.latent_mean)[:, None, None]
        std = z.new_tensor(self.latent_std)[:, None, None]
        return (z - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`."""
        if self.latent_mean is None:
            return z
        mean = z.new_tensor(self.latent_mean)[:, None, None]
        std = z.new_tensor(self.latent_std)[:, None, None]
        return z * std + mean

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (h, w) of an image of height x width pixels."""
        s = self.pixels_per_token
        if height % s or width % s:
            raise ValueError(f"image size {height}x{width} is not divisible by {s} pixels per latent "
                             "token (model.latent_downsample * model.patch_size)")
        return height // s, width // s

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        raise NotImplementedError


class PixelCodec(LatentCodec):
    """Patchified normalised pixels: D = 3 p^2, exact inverse. No parameters."""

    def __init__(self, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.latent_dim = 3 * patch_size**2
        self.pixels_per_token = patch_size

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (I, 3, H, W) in [-1, 1] -> (I, h*w, 3 p^2) float32."""
        self.grid(images.shape[-2], images.shape[-1])
        return patchify(self.normalize(images.to(torch.float32)), self.patch_size)

    def decode(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """tokens (I, h*w, 3 p^2) -> images (I, 3, h p, w p)."""
        return self.denormalize(unpatchify(tokens, h, w, self.patch_size))


def dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix (n, n): row k is frequency k, ``D @ D.T == I``."""
    i = torch.arange(n, dtype=torch.float64)
    d = torch.cos(torch.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * (2.0 / n) ** 0.5
    d[0] /= 2.0**0.5
    return d


def dct_frequencies(p: int, keep: int) -> list[tuple[int, int]]:
    """The ``keep`` lowest 2-D frequencies (row, col) of a p x p block: by diagonal (row + col),
    then by row — the order JPEG's zig-zag visits them, up to direction within a diagonal."""
    order = sorted(((a, b) for a in range(p) for b in range(p)), key=lambda f: (f[0] + f[1], f[0]))
    return order[:keep]


class DCTCodec(LatentCodec):
    """Per-channel 2-D DCT of each p x p pixel patch, the ``keep`` lowest frequencies, standardised per
    coefficient: D = 3 * keep, channels ordered (frequency, colour). Exact when keep = p**2; with
    fewer, decoding is the least-squares reconstruction from the kept frequencies. No parameters:
    the basis is fixed, the statistics come from the config (``latent_mean`` / ``latent_std``)."""

    def __init__(self, patch_size: int, keep: int | None = None):
        super().__init__()
        p = patch_size
        keep = keep or p * p
        self.patch_size, self.keep = p, keep
        self.latent_dim = 3 * keep
        self.stat_channels = self.latent_dim
        self.pixels_per_token = p
        d = dct_matrix(p)
        basis = torch.stack([torch.outer(d[a], d[b]).flatten() for a, b in dct_frequencies(p, keep)])
        self.register_buffer("basis", basis.to(torch.float32), persistent=False)     # (keep, p*p)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """(..., D) coefficients -> standardised per coefficient."""
        if self.latent_mean is None:
            return z
        return (z - z.new_tensor(self.latent_mean)) / z.new_tensor(self.latent_std)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        if self.latent_mean is None:
            return z
        return z * z.new_tensor(self.latent_std) + z.new_tensor(self.latent_mean)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (I, 3, H, W) in [-1, 1] -> (I, h*w, 3 * keep) float32."""
        h, w = self.grid(images.shape[-2], images.shape[-1])
        p, n = self.patch_size, images.shape[0]
        x = images.to(torch.float32).reshape(n, 3, h, p, w, p).permute(0, 2, 4, 1, 3, 5)
        coef = x.reshape(n, h * w, 3, p * p) @ self.basis.to(x.device, torch.float32).T  # (I, hw, 3, keep)
        return self.normalize(coef.transpose(-1, -2).reshape(n, h * w, self.latent_dim))

    def decode(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """tokens (I, h*w, 3 * keep) -> images (I, 3, h p, w p)."""
        n, p = tokens.shape[0], self.patch_size
        if tokens.shape[1:] != (h * w, self.latent_dim):
            raise ValueError(f"tokens of shape {tuple(tokens.shape)} do not form a {h}x{w} grid of "
                             f"{self.latent_dim}-channel DCT tokens")
        coef = self.denormalize(tokens.float()).reshape(n, h * w, self.keep, 3).transpose(-1, -2)
        x = (coef @ self.basis.to(coef.device, torch.float32)).reshape(n, h, w, 3, p, p)  # (I, h, w, 3, p, p)
        return x.permute(0, 3, 1, 4, 2, 5).reshape(n, 3, h * p, w * p)


class VAECodec(LatentCodec):
    """A frozen diffusers ``AutoencoderKL`` from a local directory, then p x p latent patches.

    ``path=None`` builds an unloaded placeholder (shape checks on the meta device); using it raises.
    Encoding takes the posterior mode (deterministic targets) rather than a sample.
    """

    def __init__(self, path: str | Path | None, latent_channels: int, downsample: int, patch_size: int):
        super().__init__()
        self.patch_size, self.latent_channels = patch_size, latent_channels
        self.latent_dim = latent_channels * patch_size**2
        self.stat_channels = latent_channels
        self.pixels_per_token = downsample * patch_size
        self.vae = None
        self.scale, self.shift = 1.0, 0.0
        if path is not None:
            self._load(Path(path), latent_channels, downsample)

    def _load(self, path: Path, latent_channels: int, downsample: int) -> None:
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.vae_path={str(path)!r}: no config.json there (expected a "
                                    "diffusers AutoencoderKL directory, e.g. from save_pretrained)")
        try:
            from diffusers import AutoencoderKL
        except ImportError as e:
            raise ImportError("model.codec='vae' needs diffusers: pip install 'procpaint[vae]'") from e
        vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
        got_c = vae.config.latent_channels
        got_ds = 2 ** (len(vae.config.block_out_channels) - 1)
        if got_c != latent_channels or got_ds != downsample:
            raise ValueError(f"VAE at {path} has latent_channels={got_c}, downsample={got_ds}; the config "
                             f"says model.latent_channels={latent_channels}, "
                             f"model.latent_downsample={downsample}")
        vae.requires_grad_(False).eval()
        self.vae = vae
        self.scale = float(vae.config.scaling_factor or 1.0)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    def _need(self):
        if self.vae is None:
            raise RuntimeError("model.codec='vae' but no VAE is loaded: set model.vae_path to a local "
                               "diffusers AutoencoderKL directory")
        return self.vae

    def train(self, mode: bool = True) -> VAECodec:
        super().train(mode)
        if self.vae is not None:
            self.vae.eval()                    # frozen: never leave eval mode
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (I, 3, H, W) in [-1, 1] -> (I, h*w, C p^2) float32 normalised latents."""
        vae = self._need()
        self.grid(images.shape[-2], images.shape[-1])
        dtype = next(vae.parameters()).dtype
        z = vae.encode(images.to(dtype)).latent_dist.mode()                   # (I, C, Hl, Wl)
        z = (z.float() - self.shift) * self.scale
        return patchify(self.normalize(z), self.patch_size)

    def decode(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """tokens (I, h*w, C p^2) -> images (I, 3, H, W), roughly in [-1, 1] (not clamped)."""
        vae = self._need()
        z = self.denormalize(unpatchify(tokens.float(), h, w, self.patch_size)) / self.scale + self.shift
        dtype = next(vae.parameters()).dtype
        return vae.decode(z.to(dtype)).sample.float()


@torch.no_grad()
def measure_latent_stats(codec: LatentCodec, images: torch.Tensor, *, min_std: float = 1e-3
                         ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of ``codec``'s un-normalised latent image over ``images`` (I, 3, H, W).

    These are what ``ModelConfig.latent_mean`` / ``latent_std`` hold. ``min_std`` keeps a constant
    channel (a blank dataset) from dividing by zero.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"need a non-empty (I, 3, H, W) batch of images, got {tuple(images.shape)}")
    saved = codec.latent_mean, codec.latent_std
    codec.set_stats(None, None)
    try:
        tokens = codec.encode(images)                                     # (I, h*w, p*p*C)
    finally:
        codec.set_stats(*saved)
    z = tokens.reshape(-1, codec.stat_channels).double()   # the statistics' channels run last
    mean, std = z.mean(0), z.std(0).clamp_min(min_std)
    return tuple(mean.tolist()), tuple(std.tolist())


def build_codec(cfg: ModelConfig) -> LatentCodec:
    """The codec named by ``cfg.codec`` (checked against ``cfg.latent_dim``)."""
    if cfg.codec in ("pixel", "dct"):
        if cfg.latent_channels != 3 or cfg.latent_downsample != 1:
            raise ValueError(f"model.codec={cfg.codec!r} needs model.latent_channels=3 and "
                             f"model.latent_downsample=1, got {cfg.latent_channels} and "
                             f"{cfg.latent_downsample}")
        codec = PixelCodec(cfg.patch_size) if cfg.codec == "pixel" else DCTCodec(cfg.patch_size, cfg.dct_keep)
    else:
        codec = VAECodec(cfg.vae_path, cfg.latent_channels, cfg.latent_downsample, cfg.patch_size)
    codec.set_stats(cfg.latent_mean, cfg.latent_std)
    return codec
