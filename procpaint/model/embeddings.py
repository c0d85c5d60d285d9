"""Position and timestep embeddings of the unified model.

- :class:`RotaryEmbedding`: 1-D RoPE over the packed ``position_ids`` (Qwen2 layout: the head dim is
  split into two halves that rotate together, ``rotate_half``). Every token of an image shares one
  position id, so RoPE sees an image as a single "word"; where a token sits inside its image comes
  from the 2-D embedding below (BAGEL's convention).
- :func:`sincos_2d`: fixed 2-D sin-cos embedding of a latent token's (row, col) inside its image
  (MAE / BAGEL ``PositionEmbedding``), computed on the fly instead of a ``max_latent_size**2`` table:
  the table would be 58 MB at BAGEL-7B width, the direct computation is N x D sin/cos.
  :func:`sincos_grid` is the same for flattened ids on a fixed grid (BAGEL's tables).
- :class:`TimestepEmbedder`: sinusoidal features of the flow time ``t in [0, 1]`` -> MLP (DiT).

None of these hold buffers, so a model built on the meta device needs no buffer re-initialisation.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """cos/sin tables for RoPE at arbitrary (packed) position ids."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
        self.head_dim, self.theta = head_dim, theta

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (L,) int -> cos, sin (L, 1, head_dim) in ``dtype`` (broadcast over heads)."""
        dev = position_ids.device
        # Frequencies in float32 whatever the model dtype: bf16 positions lose integers past 256.
        inv_freq = self.theta ** (-torch.arange(0, self.head_dim, 2, device=dev, dtype=torch.float32)
                                  / self.head_dim)                           # (hd/2,)
        freqs = position_ids.to(torch.float32)[:, None] * inv_freq[None]     # (L, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)[:, None, :]                  # (L, 1, hd)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (L, heads, hd), cos/sin (L, 1, hd) -> rotated x (L, heads, hd)."""
    return x * cos + _rotate_half(x) * sin


def _sincos_1d(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """pos (N,) -> (N, dim): [sin(pos * w_i), cos(pos * w_i)], w_i = 10000^(-i / (dim/2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, device=pos.device, dtype=torch.float64) / (dim / 2))
    out = pos.to(torch.float64)[:, None] * omega[None]                       # (N, dim/2)
    return torch.cat([out.sin(), out.cos()], dim=-1)


def sincos_2d(rows: torch.Tensor, cols: torch.Tensor, dim: int) -> torch.Tensor:
    """2-D sin-cos embedding (N, dim) float32 of grid coordinates rows (N,), cols (N,).

    Half the channels encode the row, half the column (MAE's ``get_2d_sincos_pos_embed``, which
    BAGEL's latent ``PositionEmbedding`` tabulates). Computed in float64 then cast, so the values
    equal the tabulated ones bit for bit.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    emb = torch.cat([_sincos_1d(rows, dim // 2), _sincos_1d(cols, dim // 2)], dim=-1)
    return emb.to(torch.float32)


def sincos_grid(position_ids: torch.Tensor, side: int, dim: int, order: str = "row_col") -> torch.Tensor:
    """2-D sin-cos embedding (N, dim) float32 of flattened grid ids ``r * side + c`` (N,).

    Row ``i`` of BAGEL's ``PositionEmbedding`` table (``latent_pos_embed``, ``vit_pos_embed``:
    ``side**2`` rows) is ``sincos_grid(i, side, dim, "col_row")``: MAE's meshgrid puts the column
    first. ``order="row_col"`` puts the row's channels first.
    """
    rows, cols = position_ids // side, position_ids % side
    if order == "col_row":
        rows, cols = cols, rows
    return sincos_2d(rows, cols, dim)


def timestep_features(t: torch.Tensor, dim: int, scale: float = 1.0, max_period: float = 10000.0
                      ) -> torch.Tensor:
    """t (N,) float -> (N, dim) float32 sinusoidal features [cos, sin] (DiT ``timestep_embedding``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, device=t.device, dtype=torch.float32) / half)  # (dim/2,)
    args = (t.to(torch.float32) * scale)[:, None] * freqs[None]              # (N, dim/2)
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    if dim % 2:                                                              # odd dim: zero pad
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], 1)], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """t in [0, 1] (N,) -> (N, hidden): sinusoid of ``scale * t`` -> Linear -> SiLU -> Linear.

    ``scale`` (``ModelConfig.timestep_scale``) spreads [0, 1] over the sinusoid's range: with
    scale 1 the fastest feature is cos(t), which barely separates nearby timesteps; 1000 is the
    DiT/FLUX choice. BAGEL-7B weights expect 1.
    """

    def __init__(self, hidden_size: int, freq_dim: int = 256, scale: float = 1000.0):
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def reset_parameters(self, std: float = 0.02) -> None:
        """DiT init: N(0, 0.02) weights, zero biases."""
        for lin in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(lin.weight, std=std)
            nn.init.zeros_(lin.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        feats = timestep_features(t, self.freq_dim, self.scale)             # (N, F)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))                  # (N, D)
