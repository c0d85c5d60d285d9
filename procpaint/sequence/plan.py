"""Sample -> sequence plan -> sample layout (docs/ARCHITECTURE.md, "The packed sequence"; BAGEL's
conventions).

A :class:`SequencePlan` is the list of splits one sample becomes, with token ids and loss flags but
no tensors, so its length is known cheaply (the packer needs lengths long before it builds a batch):

    TextSegment(loss)          -> "causal" split: the text's token ids (CE targets when loss)
    ImageSegment(loss=True)    -> "noise" split  <|vision_start|> + h*w noised latents + <|vision_end|>
                                  then "full" split, the same image clean (what later tokens see)
    ImageSegment(loss=False)   -> "full" split only (context)

With the ViT understanding path (``vit``: :class:`ViTSplits`, ``model.vit``) every *clean* image (a
context image, the clean copy of a generated image) is followed by its **ViT split**, as BAGEL's
``_add_image`` orders them (VAE copies, then ``vit_image``): a "full" split
``<|vision_start|>`` + h*w ViT patch tokens + ``<|vision_end|>`` (:func:`procpaint.model.vit.vit_grid`
patches) on the understanding expert, no loss. A generated image with ``clean_copy=False`` has none
(nothing later reads it). Without ``vit`` plans are exactly what they were.

:meth:`SequencePlan.layout` turns a plan into sample-local index arrays (:class:`SampleLayout`):

* Position ids: text advances one per token; every token of an image split shares one id; a noise
  split does not advance it, so the clean copy that follows shares the noised copy's id (BAGEL's
  ``curr_rope_id`` handling); a ViT split takes the next id and advances it too (BAGEL's
  ``vit_image``). Each sample starts at 0.
* CE labels (the rule in :mod:`procpaint.sequence.types`): a target is predicted by the position
  right before it in the *clean stream* (noise splits skipped). Targets: tokens of loss text, the
  ``<|vision_start|>`` of a generated image (predicted by the last token before it: the modality
  switch) and EOS when ``sample.eos`` (predicted by the sample's last position). What follows an
  image is predicted by its last clean split's ``<|vision_end|>``: the ViT split's when there is
  one, else the clean copy's. EOS is a label only,
  never an input token: once it is predicted the trajectory is over. The first token of a sample has
  no predictor and is never a target (there is no BOS token).
* Expert routing: latent tokens -> generation expert; everything else, the vision markers and ViT
  tokens included, -> understanding expert (BAGEL routes by packed_vae_token_indexes the same way).

CFG dropout (decided by the packer, applied here so lengths stay exact). Text dropout removes the
conditioning text of the *first generated image*: the segments before it whose role is in
``cfg_text_roles`` (default prompt and plan), so the first image is trained with nothing before it --
exactly the text-unconditional context the generator builds for a single-pass image or a first draft
(everything since the last image, i.e. everything). A sample that generates no image (conflict,
alignment) loses its prompt only: its plan is what the critique target is about. A dropped text segment is
removed entirely and consumes no position id (BAGEL's ``PackedDataset`` does ``continue``); a dropped
context image is removed but still advances the position id by one per split it would have had
(BAGEL: ``curr_rope_id += 1`` for its VAE and for its ViT split).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from procpaint.kernels.modes import Mode
from procpaint.model.vit import vit_grid
from procpaint.sequence.tokenizer import TextTokenizer
from procpaint.sequence.types import ImageSegment, Sample, TextSegment

CAUSAL, NOISE, FULL = Mode.CAUSAL, Mode.NOISE, Mode.FULL


@dataclass(frozen=True)
class PlanItem:
    """One split of the packed sequence."""

    mode: str                             # "causal" | "noise" | "full"
    num_tokens: int
    token_ids: tuple[int, ...] = ()       # causal: the text's token ids
    loss: bool = False                    # causal: CE on the tokens; noise: always True (MSE + switch)
    image: int = -1                       # noise/full: row of SequencePlan.images
    grid: tuple[int, int] = (0, 0)        # noise/full: (h, w) latent tokens
    role: str = "text"
    rope_skip: int = 0                    # position ids skipped before this item (dropped context image)
    vit: bool = False                     # full: a ViT split (grid = ViT patches), not a VAE copy


@dataclass(frozen=True)
class ViTSplits:
    """The ViT understanding path's patch geometry (``model.vit_patch_size`` /
    ``vit_max_patches_per_side``); given to the planner / packer, every clean image gets a ViT split."""

    patch_size: int
    max_per_side: int

    def __post_init__(self):
        if self.patch_size < 1 or self.max_per_side < 1:
            raise ValueError(f"ViT patch size and max patches per side must be >= 1, got {self}")

    @classmethod
    def from_model_config(cls, model_cfg) -> ViTSplits | None:
        """The model's ViT geometry, or None when it has no ViT path (``model.vit=False``)."""
        return cls(model_cfg.vit_patch_size, model_cfg.vit_max_patches_per_side) if model_cfg.vit else None

    def grid(self, image: torch.Tensor) -> tuple[int, int]:
        """(h, w) ViT patches of a (3, H, W) image."""
        return vit_grid(int(image.shape[1]), int(image.shape[2]), self.patch_size, self.max_per_side)


@dataclass
class SampleLayout:
    """Sample-local index arrays of one plan (int64 numpy; offsets in [0, num_tokens))."""

    split_lens: list[int]
    attn_modes: list[str]
    position_ids: np.ndarray              # (n,)
    text_offsets: np.ndarray              # (T,) text positions (text ids, vision markers)
    text_ids: np.ndarray                  # (T,)
    latent_offsets: np.ndarray            # (N,)
    latent_image: np.ndarray              # (N,) row of plan.images
    latent_rows: np.ndarray               # (N,) row of the token in its image's latent grid
    latent_cols: np.ndarray               # (N,) column
    latent_noise_split: np.ndarray        # (N,) ordinal of the token's noise split, -1 for clean copies
    ce_offsets: np.ndarray                # (C,) predicting positions
    ce_labels: np.ndarray                 # (C,) target ids
    num_noise_splits: int
    vit_offsets: np.ndarray               # (V,) ViT patch tokens
    vit_images: list[int]                 # per ViT split: row of plan.images
    vit_grids: list[tuple[int, int]]      # per ViT split: (h, w) patches


@dataclass
class SequencePlan:
    items: list[PlanItem]
    images: list[torch.Tensor]            # distinct images of the sample, each (3, H, W)
    eos: bool
    vision_start_id: int
    vision_end_id: int
    eos_id: int
    sample_id: str = ""
    dropped_text: bool = False
    dropped_image: bool = False
    num_tokens: int = field(init=False)

    def __post_init__(self):
        self.num_tokens = sum(it.num_tokens for it in self.items)

    def layout(self) -> SampleLayout:
        """Positions, token ids, latent bookkeeping, CE pairs of this sample (see module docstring)."""
        pos = 0                      # next RoPE id
        cur = 0                      # next token offset
        prev_clean = -1              # last clean-stream offset: predicts the next target
        n_noise = 0
        positions, text_off, text_ids = [], [], []
        lat_off, lat_img, lat_row, lat_col, lat_noise = [], [], [], [], []
        vit_off, vit_img, vit_hw = [], [], []
        ce_off: list[np.ndarray] = []
        ce_lab: list[np.ndarray] = []
        for it in self.items:
            n = it.num_tokens
            pos += it.rope_skip
            if it.mode == CAUSAL:
                positions.append(np.arange(pos, pos + n, dtype=np.int64))
                pos += n
                text_off.append(np.arange(cur, cur + n, dtype=np.int64))
                ids = np.asarray(it.token_ids, dtype=np.int64)
                text_ids.append(ids)
                if it.loss:
                    # token j is predicted by offset cur+j-1, the first one by prev_clean (if any).
                    pred = np.arange(cur - 1, cur + n - 1, dtype=np.int64)
                    pred[0] = prev_clean
                    first = 0 if prev_clean >= 0 else 1
                    ce_off.append(pred[first:])
                    ce_lab.append(ids[first:])
                prev_clean = cur + n - 1
            else:
                h, w = it.grid
                positions.append(np.full(n, pos, dtype=np.int64))
                text_off.append(np.array([cur, cur + n - 1], dtype=np.int64))
                text_ids.append(np.array([self.vision_start_id, self.vision_end_id], dtype=np.int64))
                if it.vit:                          # understanding tokens: no latents, no loss
                    vit_off.append(np.arange(cur + 1, cur + 1 + h * w, dtype=np.int64))
                    vit_img.append(it.image)
                    vit_hw.append((h, w))
                    pos += 1
                    prev_clean = cur + n - 1
                    cur += n
                    continue
                lat_off.append(np.arange(cur + 1, cur + 1 + h * w, dtype=np.int64))
                lat_img.append(np.full(h * w, it.image, dtype=np.int64))
                lat_row.append(np.repeat(np.arange(h, dtype=np.int64), w))
                lat_col.append(np.tile(np.arange(w, dtype=np.int64), h))
                if it.mode == NOISE:
                    # Modality switch: the last clean token before a generated image predicts it.
                    if prev_clean >= 0:
                        ce_off.append(np.array([prev_clean], dtype=np.int64))
                        ce_lab.append(np.array([self.vision_start_id], dtype=np.int64))
                    lat_noise.append(np.full(h * w, n_noise, dtype=np.int64))
                    n_noise += 1
                    # No position advance and prev_clean unchanged: the clean copy stands in.
                else:
                    lat_noise.append(np.full(h * w, -1, dtype=np.int64))
                    pos += 1
                    prev_clean = cur + n - 1        # the clean <|vision_end|> predicts what follows
            cur += n
        if self.eos and prev_clean >= 0:
            ce_off.append(np.array([prev_clean], dtype=np.int64))
            ce_lab.append(np.array([self.eos_id], dtype=np.int64))

        def cat(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

        return SampleLayout(
            split_lens=[it.num_tokens for it in self.items],
            attn_modes=[it.mode for it in self.items],
            position_ids=cat(positions), text_offsets=cat(text_off), text_ids=cat(text_ids),
            latent_offsets=cat(lat_off), latent_image=cat(lat_img), latent_rows=cat(lat_row),
            latent_cols=cat(lat_col), latent_noise_split=cat(lat_noise),
            ce_offsets=cat(ce_off), ce_labels=cat(ce_lab),
            num_noise_splits=n_noise, vit_offsets=cat(vit_off), vit_images=vit_img, vit_grids=vit_hw,
        )


def _where(sample: Sample, k: int, seg) -> str:
    """Names a segment in errors: sample id, its source (file:line, set by the loader) and index."""
    src = sample.meta.get("source") if isinstance(sample.meta, dict) else None
    return (f"sample {sample.id or '<no id>'}{f' ({src})' if src else ''} segment {k} "
            f"({getattr(seg, 'role', type(seg).__name__)})")


class RecordError(ValueError):
    """A training record the planner cannot turn into tokens (e.g. unknown words), naming file:line."""


class SequencePlanner:
    """Turns :class:`Sample` into :class:`SequencePlan` for one tokenizer and latent geometry.

    Args:
        tokenizer: the text tokenizer (special ids are taken from it).
        pixels_per_token: image pixels per side of one latent token (ModelConfig.pixels_per_token).
        max_latent_size: optional limit on latent tokens per side (ModelConfig.max_latent_size);
            a larger image is a ValueError naming the sample and segment.
        cfg_text_roles: roles of the text before the first generated image that CFG text dropout
            removes (default: prompt and plan; see the module docstring).
        vit: the ViT path's geometry: every clean image also gets a ViT split (module docstring);
            None (default): no ViT splits.
    """

    def __init__(self, tokenizer: TextTokenizer, pixels_per_token: int, *, max_latent_size: int | None = None,
                 cfg_text_roles: tuple[str, ...] = ("prompt", "plan"), vit: ViTSplits | None = None):
        if pixels_per_token < 1:
            raise ValueError(f"pixels_per_token must be >= 1, got {pixels_per_token}")
        self.tokenizer, self.ppt = tokenizer, int(pixels_per_token)
        self.max_latent_size, self.cfg_text_roles = max_latent_size, tuple(cfg_text_roles)
        self.vit = vit

    @classmethod
    def from_model_config(cls, tokenizer: TextTokenizer, model_cfg, **kwargs) -> SequencePlanner:
        return cls(tokenizer, model_cfg.pixels_per_token, max_latent_size=model_cfg.max_latent_size,
                   vit=ViTSplits.from_model_config(model_cfg), **kwargs)

    def grid(self, image: torch.Tensor, where: str = "image") -> tuple[int, int]:
        """(h, w) latent tokens of a (3, H, W) image; ValueError naming ``where`` when it does not tile."""
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"{where}: image must be a (3, H, W) tensor, got {shape}")
        H, W = int(image.shape[1]), int(image.shape[2])
        if H % self.ppt or W % self.ppt or H == 0 or W == 0:
            raise ValueError(f"{where}: image size {H}x{W} is not a positive multiple of "
                             f"pixels_per_token={self.ppt} (model.patch_size * model.latent_downsample)")
        h, w = H // self.ppt, W // self.ppt
        if self.max_latent_size is not None and max(h, w) > self.max_latent_size:
            raise ValueError(f"{where}: image gives {h}x{w} latent tokens, more than "
                             f"model.max_latent_size={self.max_latent_size} per side")
        return h, w

    def _encode(self, seg: TextSegment, where: str) -> list[int]:
        try:
            return self.tokenizer.encode(seg.text)
        except ValueError as e:
            raise RecordError(f"{where}: {e}") from e

    def _text_drops(self, sample: Sample) -> set[int]:
        """Indexes of the text segments text dropout removes (module docstring, "CFG dropout")."""
        segs = sample.segments
        first = next((k for k, s in enumerate(segs) if isinstance(s, ImageSegment) and s.loss), None)
        if first is None:
            return {k for k, s in enumerate(segs) if isinstance(s, TextSegment) and s.role == "prompt"}
        return {k for k in range(first)
                if isinstance(segs[k], TextSegment) and segs[k].role in self.cfg_text_roles}

    @staticmethod
    def _droppable_image(seg) -> bool:
        return isinstance(seg, ImageSegment) and not seg.loss

    def has_droppable(self, sample: Sample) -> tuple[bool, bool]:
        """(has a prompt text to drop, has a context image to drop) for CFG dropout statistics."""
        return (bool(self._text_drops(sample)), any(self._droppable_image(s) for s in sample.segments))

    def plan(self, sample: Sample, *, drop_text: bool = False, drop_image: bool = False) -> SequencePlan:
        """The sequence plan of ``sample``; ``drop_text`` / ``drop_image`` apply CFG dropout.

        Text segments that tokenize to nothing are left out (a split must not be empty).
        """
        tok = self.tokenizer
        items: list[PlanItem] = []
        images: list[torch.Tensor] = []
        rope_skip = 0
        dropped = self._text_drops(sample) if drop_text else set()
        for k, seg in enumerate(sample.segments):
            where = _where(sample, k, seg)
            if isinstance(seg, TextSegment):
                if k in dropped:
                    continue
                ids = self._encode(seg, where)
                if ids:
                    items.append(PlanItem(CAUSAL, len(ids), tuple(ids), seg.loss, role=seg.role,
                                          rope_skip=rope_skip))
                    rope_skip = 0
            elif isinstance(seg, ImageSegment):
                h, w = self.grid(seg.image, where)
                if drop_image and self._droppable_image(seg):
                    rope_skip += 1 if self.vit is None else 2     # its VAE and its ViT split
                    continue
                row = next((i for i, im in enumerate(images) if im is seg.image), None)
                if row is None:
                    row, _ = len(images), images.append(seg.image)
                n = h * w + 2
                if seg.loss:
                    items.append(PlanItem(NOISE, n, loss=True, image=row, grid=(h, w), role=seg.role,
                                          rope_skip=rope_skip))
                    rope_skip = 0
                if seg.clean_copy:
                    items.append(PlanItem(FULL, n, image=row, grid=(h, w), role=seg.role,
                                          rope_skip=rope_skip))
                    rope_skip = 0
                    if self.vit is not None:
                        vh, vw = self.vit.grid(seg.image)
                        items.append(PlanItem(FULL, vh * vw + 2, image=row, grid=(vh, vw), role=seg.role,
                                              vit=True))
            else:
                raise ValueError(f"{where}: unknown segment type {type(seg).__name__}")
        return SequencePlan(items, images, bool(sample.eos), tok.vision_start_id, tok.vision_end_id,
                            tok.eos_id, sample_id=sample.id, dropped_text=drop_text, dropped_image=drop_image)

    def num_tokens(self, sample: Sample, *, drop_text: bool = False, drop_image: bool = False) -> int:
        """Tokens ``sample`` occupies in a pack, without building a plan or any tensor."""
        total = 0
        dropped = self._text_drops(sample) if drop_text else set()
        for k, seg in enumerate(sample.segments):
            where = _where(sample, k, seg)
            if isinstance(seg, TextSegment):
                if k not in dropped:
                    total += len(self._encode(seg, where))
            else:
                h, w = self.grid(seg.image, where)
                if not (drop_image and self._droppable_image(seg)):
                    total += (h * w + 2) * (2 if seg.loss and seg.clean_copy else 1)
                    if self.vit is not None and seg.clean_copy:
                        vh, vw = self.vit.grid(seg.image)
                        total += vh * vw + 2
        return total
