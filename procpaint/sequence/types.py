"""The two contracts of the sequence room.

``Sample`` is what the datasets room yields and the sequence planner consumes: an ordered list of
text and image segments with loss flags (docs/ARCHITECTURE.md, "The packed sequence").
``PackedBatch`` is what the packer yields and the model / losses consume: one packed sequence of
``seq_len`` tokens with BAGEL-style index tensors.

Label rule (the planner implements it; stated here because both sides rely on it): every *target*
token is predicted by the position right before it in the clean stream (noised image splits are
skipped, since what follows a generated image is predicted by its clean copy's ``<|vision_end|>``).
Targets are: the tokens of text segments with ``loss=True``; ``<|vision_start|>`` of an image segment
with ``loss=True`` (predicted by the last token of the text before it: the modality switch); and EOS
when ``Sample.eos`` is set (predicted by the last position of the sample). With the ViT path
(``model.vit``) a clean image's ViT split follows its clean copy, so its ``<|vision_end|>`` is the
position that predicts what follows the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

import torch

Role = Literal["prompt", "plan", "critique", "refine", "instruction", "image", "text", "fact"]


@dataclass(frozen=True)
class TextSegment:
    text: str                 # may contain the tags <ins> </ins> <des> </des> <refine> </refine>
    loss: bool = False        # CE on this segment's tokens
    role: Role = "text"       # prompt / plan / critique / refine / instruction (CFG dropout, logging)


@dataclass(frozen=True)
class ImageSegment:
    image: torch.Tensor       # (3, H, W) float32 in [-1, 1]
    loss: bool = False        # True: generated (noised copy trained with MSE, then its clean copy)
    role: Role = "image"      # False: context only (one clean copy, no loss)
    clean_copy: bool = True   # False (generated images only): no clean copy after the noised one,
                              # for an image nothing later reads (single-pass's final image, as in
                              # BAGEL's text-to-image data); nothing then predicts EOS from it

    def __post_init__(self):
        if not self.clean_copy and not self.loss:
            raise ValueError("ImageSegment(clean_copy=False) needs loss=True: a context image is its "
                             "clean copy")


Segment = TextSegment | ImageSegment


@dataclass
class Sample:
    segments: list[Segment]
    eos: bool = False                                             # EOS is a CE target at the end
    kind: Literal["multiturn", "conflict", "alignment", "single_pass", "fact"] = "multiturn"  # fact: text
    id: str = ""
    meta: dict = field(default_factory=dict)                      # source file/line, prompt, tags


@dataclass
class PackedBatch:
    """One packed sequence of ``seq_len`` tokens (real samples + a final padding sample).

    Shapes: L = seq_len, T = text tokens (incl. vision markers and padding), N = latent tokens,
    M = noised (loss) latent tokens, C = CE targets, I = distinct images, V = ViT patch tokens
    (0 unless the packer was given the ViT path: ``model.vit``), p = ``model.vit_patch_size``.

    The ViT fields are BAGEL's ``packed_vit_tokens`` / ``packed_vit_position_ids`` /
    ``vit_token_seqlens`` / ``packed_vit_token_indexes``: one ViT split per clean image, each
    ``<|vision_start|>`` (in ``text_*``) + its patch tokens + ``<|vision_end|>`` (in ``text_*``).
    """

    seq_len: int
    sample_lens: list[int]             # per sample, padding sample last; sums to L
    split_lens: list[int]              # per split; sums to L
    attn_modes: list[str]              # per split: "causal" | "full" | "noise"
    text_ids: torch.Tensor             # (T,) int64 token ids
    text_indexes: torch.Tensor         # (T,) int64 positions in [0, L)
    position_ids: torch.Tensor         # (L,) int64 RoPE positions (an image shares one id)
    latent_indexes: torch.Tensor       # (N,) int64 positions in [0, L) of latent tokens
    latent_image_ids: torch.Tensor     # (N,) int64 row of `images` each latent token comes from
    latent_patch_ids: torch.Tensor     # (N,) int64 row-major patch index inside its image
    latent_timesteps: torch.Tensor     # (N,) float32 t in [0, 1]; 0 for clean (context) copies
    latent_noised: torch.Tensor        # (N,) bool: token belongs to a noised copy (MSE target)
    images: torch.Tensor               # (I, 3, H, W) float32 in [-1, 1]
    ce_indexes: torch.Tensor           # (C,) int64 positions whose output predicts ce_labels
    ce_labels: torch.Tensor            # (C,) int64 target token ids
    num_real_tokens: int = 0           # tokens of real samples (L minus padding)
    num_samples: int = 0               # real samples in the pack
    stats: dict = field(default_factory=dict)  # packing efficiency, skipped samples, ...
    vit_indexes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
                                       # (V,) int64 positions in [0, L) of ViT patch tokens
    vit_patches: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))
                                       # (V, p*p*3) float32 patches, channels (dy, dx, c), in [-1, 1]
    vit_position_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
                                       # (V,) int64 grid ids r * vit_max_patches_per_side + c
    vit_seqlens: list[int] = field(default_factory=list)  # per ViT split, in pack order; sums to V

    @property
    def und_indexes(self) -> torch.Tensor:
        """(L - N,) positions routed to the understanding expert (BAGEL's name), ascending: the text
        tokens and the ViT patch tokens. Without ViT tokens it is ``text_indexes`` itself (no copy)."""
        if self.vit_indexes.numel() == 0:
            return self.text_indexes
        return torch.cat([self.text_indexes, self.vit_indexes]).sort().values

    @property
    def gen_indexes(self) -> torch.Tensor:
        """(N,) positions routed to the generation expert (BAGEL's name): ``latent_indexes`` itself."""
        return self.latent_indexes

    @property
    def mse_indexes(self) -> torch.Tensor:
        """(M,) positions of noised latent tokens (BAGEL's mse_loss_indexes)."""
        return self.latent_indexes[self.latent_noised]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            moved[f.name] = v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        return PackedBatch(**moved)
