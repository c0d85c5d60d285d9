"""The understanding path for images: a SigLIP vision encoder over variable-size patch grids (NaViT),
BAGEL's connector to the language model's width, and its 2-D position embedding there.

Follows ByteDance-Seed/Bagel (``modeling/bagel/siglip_navit.py``, ``bagel.py``, ``modeling_utils.py``,
``data/data_utils.py``) and Hugging Face's ``SiglipVisionModel``; written afresh. One context image
becomes h*w tokens of the understanding expert:

    image (3, H, W) in [-1, 1] (SigLIP's mean 0.5, std 0.5), H and W multiples of p
      -> patches (h*w, p*p*3), channels (dy, dx, c)                      :func:`vit_patches`
      -> patch_embed (SigLIP's stride-p conv as one Linear) + pos_embed[id]        (h*w, W)
      -> pre-LN encoder layers: attention within the image, GELU(tanh) MLP
      -> post_norm                                                                  (h*w, W)
      -> connector: fc1 -> GELU(tanh) -> fc2                                        (h*w, D)
      +  vit_pos_embed: fixed 2-D sin-cos of the same id in width D                 (h*w, D)

Position ids "extrapolate" (BAGEL's default): patch (r, c) of any image has id ``r * S + c`` with
``S = vit_max_patches_per_side`` (70 = 980 px / 14), so a small image reads the top-left corner of
the learned ``S*S`` table instead of a resampled one (:func:`vit_position_ids`). Many images run in
one call as a flat (N, ...) sequence with their lengths (NaViT packing; BAGEL's ``cu_seqlens``):
each attends only to itself, through one padded SDPA call (no padding when all are equal).

BAGEL builds the encoder with one layer fewer than its ``vit_config.json`` says (so400m: 27 -> 26),
stores the patch embedding already flattened (``convert_conv2d_to_linear``: weight (W, p*p*3) in
the (dy, dx, c) order above) and uses no RoPE in the ViT; ``procpaint.model.bagel_io`` maps the
names. In packs (``procpaint.sequence``) every clean image gets a ViT split after its VAE copy;
:func:`vit_grid` / :func:`vit_inputs` are the one home of the image -> ViT patches rule that the
packer and the inference engine share.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from procpaint.model.codecs import patchify
from procpaint.model.config import ModelConfig
from procpaint.model.embeddings import sincos_grid


def vit_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(I, 3, H, W) -> (I * h * w, p * p * 3) row-major patches of each image, channels (dy, dx, c)."""
    return patchify(images, patch_size).flatten(0, 1)


def vit_position_ids(h: int, w: int, max_per_side: int, device=None) -> torch.Tensor:
    """(h * w,) ids ``r * max_per_side + c`` of an h x w patch grid, row-major (BAGEL's extrapolate)."""
    if max(h, w) > max_per_side:
        raise ValueError(f"a {h}x{w} patch grid exceeds model.vit_max_patches_per_side={max_per_side}")
    r = torch.arange(h, device=device)[:, None]
    return (r * max_per_side + torch.arange(w, device=device)[None]).flatten()


def vit_grid(height: int, width: int, patch_size: int, max_per_side: int) -> tuple[int, int]:
    """(h, w) ViT patches of an image of ``height`` x ``width`` pixels: BAGEL's ViT resize
    (``ImageTransform`` with stride p and max side p * S; ``datasets/buckets.py`` writes out the same
    rule) without its min side: a long side over ``p * S`` is scaled back to it (aspect kept), then each
    side snaps to the nearest multiple of p, at least one patch. An image that already tiles and fits
    keeps its size (no resampling)."""
    p, s = patch_size, max_per_side
    scale = min(1.0, p * s / max(height, width))
    h = min(s, max(1, round(round(height * scale) / p)))
    w = min(s, max(1, round(round(width * scale) / p)))
    return h, w


def vit_inputs(image: torch.Tensor, patch_size: int, max_per_side: int
               ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """One image (3, H, W) in [-1, 1] -> its ViT patches (h*w, p*p*3) float32, grid ids (h*w,) int64
    and (h, w) (:func:`vit_grid`; bicubic, antialiased resampling when the size changes)."""
    h, w = vit_grid(int(image.shape[-2]), int(image.shape[-1]), patch_size, max_per_side)
    x = image.float()[None]
    if x.shape[-2:] != (h * patch_size, w * patch_size):
        x = F.interpolate(x, size=(h * patch_size, w * patch_size), mode="bicubic", antialias=True,
                          align_corners=False).clamp(-1, 1)
    return vit_patches(x, patch_size), vit_position_ids(h, w, max_per_side, image.device), (h, w)


class _Images:
    """Attention restricted to each image of a flat (N, ...) sequence of ``seqlens`` images."""

    def __init__(self, seqlens: list[int], device: torch.device):
        self.lens = [int(n) for n in seqlens]
        self.longest = max(self.lens)
        self.index = self.mask = None
        if min(self.lens) != self.longest:       # ragged: rows of a padded (I, longest) batch
            self.index = torch.cat([torch.arange(n) + i * self.longest for i, n in enumerate(self.lens)]
                                   ).to(device)                                  # (N,)
            valid = torch.arange(self.longest)[None] < torch.tensor(self.lens)[:, None]
            self.mask = valid[:, None, None, :].to(device)                       # (I, 1, 1, longest)

    def _batch(self, x: torch.Tensor) -> torch.Tensor:
        """(N, H, hd) -> (I, H, longest, hd)."""
        if self.index is not None:
            x = x.new_zeros(len(self.lens) * self.longest, *x.shape[1:]).index_copy(0, self.index, x)
        return x.view(len(self.lens), self.longest, *x.shape[1:]).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v (N, H, hd) -> (N, H, hd), full attention inside each image."""
        out = F.scaled_dot_product_attention(self._batch(q), self._batch(k), self._batch(v),
                                             attn_mask=self.mask)               # (I, H, longest, hd)
        out = out.transpose(1, 2).flatten(0, 1)                                  # (I * longest, H, hd)
        return out if self.index is None else out.index_select(0, self.index)


class ViTLayer(nn.Module):
    """Pre-LN encoder layer: x + out(attn(norm1(x))), then x + fc2(gelu_tanh(fc1(norm2(x))))."""

    def __init__(self, width: int, heads: int, intermediate: int, eps: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.qkv = nn.Linear(width, 3 * width)          # q | k | v, as the LLM's fused projection
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.fc1 = nn.Linear(width, intermediate)
        self.fc2 = nn.Linear(intermediate, width)

    def forward(self, x: torch.Tensor, images: _Images) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.qkv(self.norm1(x)).view(n, 3, self.heads, -1).unbind(1)   # (N, H, hd) each
        x = x + self.out(images.attend(q, k, v).reshape(n, -1))                   # (N, W)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))


class VisionEncoder(nn.Module):
    """SigLIP vision transformer without a pooling head, on packed patches of variable-size images."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w, p, s = cfg.vit_hidden_size, cfg.vit_patch_size, cfg.vit_max_patches_per_side
        self.patch_size, self.max_per_side = p, s
        self.patch_embed = nn.Linear(3 * p * p, w)
        self.pos_embed = nn.Embedding(s * s, w)
        self.layers = nn.ModuleList(ViTLayer(w, cfg.vit_num_heads, cfg.vit_intermediate_size,
                                             cfg.vit_layer_norm_eps) for _ in range(cfg.vit_num_layers))
        self.post_norm = nn.LayerNorm(w, eps=cfg.vit_layer_norm_eps)

    @torch.no_grad()
    def reset_parameters(self, std: float) -> None:
        """Linear weights N(0, std), biases 0, position table N(0, 1/sqrt(W)), LayerNorms 1 / 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()
        nn.init.normal_(self.pos_embed.weight, std=self.pos_embed.embedding_dim ** -0.5)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor,
                seqlens: list[int] | torch.Tensor) -> torch.Tensor:
        """patches (N, p*p*3) of ``seqlens`` images in a row (sum = N), ids (N,) -> features (N, W)."""
        lens = seqlens.tolist() if torch.is_tensor(seqlens) else list(seqlens)
        if sum(lens) != patches.shape[0]:
            raise ValueError(f"seqlens sum to {sum(lens)}, but there are {patches.shape[0]} patches")
        x = self.patch_embed(patches.to(self.patch_embed.weight.dtype)) + self.pos_embed(position_ids)
        images = _Images(lens, x.device)
        for layer in self.layers:
            x = layer(x, images)                                                 # (N, W)
        return self.post_norm(x)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Equal-size images (I, 3, H, W) -> features (I, h*w, W)."""
        i, _, hh, ww = images.shape
        h, w = hh // self.patch_size, ww // self.patch_size
        ids = vit_position_ids(h, w, self.max_per_side, images.device).repeat(i)
        return self(vit_patches(images, self.patch_size), ids, [h * w] * i).view(i, h * w, -1)


class Connector(nn.Module):
    """BAGEL's ``MLPconnector``: ViT width -> fc1 -> GELU(tanh) -> fc2 -> LLM width."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    @torch.no_grad()
    def reset_parameters(self, std: float) -> None:
        for lin in (self.fc1, self.fc2):
            nn.init.normal_(lin.weight, std=std)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class GridPosEmbed(nn.Module):
    """BAGEL's fixed ``PositionEmbedding`` (``vit_pos_embed``): ids (N,) -> 2-D sin-cos (N, dim), computed
    on the fly (no parameters: its ``side**2`` table is checked on load and written on export)."""

    def __init__(self, dim: int, side: int, order: str):
        super().__init__()
        self.dim, self.side, self.order = dim, side, order

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return sincos_grid(position_ids, self.side, self.dim, self.order)

    def table(self) -> torch.Tensor:
        """The (side**2, dim) float32 table as BAGEL's checkpoint stores it."""
        return self(torch.arange(self.side**2))
