"""Hand-built PackedBatch instances for model tests (independent of the sequence packer).

A pack is described as samples of items:
    ("text", n, loss)  n causal text tokens (CE targets when loss)
    ("gen", i)         image i generated: noise split then its clean full copy (one position id)
    ("ctx", i)         image i as context: one clean full split
Each image split is <|vision_start|> + h*w latent tokens + <|vision_end|> (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import pytest
import torch

from procpaint.model import model_config
from procpaint.sequence.types import PackedBatch

PAD_ID, VS_ID, VE_ID = 0, 3, 4
VOCAB = 40


def build_pack(samples, images: torch.Tensor, *, ppt: int = 2, pad: int = 0, seed: int = 0) -> PackedBatch:
    g = torch.Generator().manual_seed(seed)
    hh, ww = images.shape[-2] // ppt, images.shape[-1] // ppt
    hw = hh * ww
    text_ids, text_idx, pos, lat_idx, lat_img, lat_patch, lat_t, lat_noised = ([] for _ in range(8))
    ce_idx, ce_lab, split_lens, modes, sample_lens = [], [], [], [], []
    off = 0

    def add_text(tok_id, p):
        nonlocal off
        text_ids.append(tok_id)
        text_idx.append(off)
        pos.append(p)
        off += 1
        return off - 1

    for sample in samples:
        start, p, prev = off, 0, None
        for item in sample:
            if item[0] == "text":
                _, n, loss = item
                for _ in range(n):
                    tok = int(torch.randint(10, VOCAB, (1,), generator=g))
                    here = add_text(tok, p)
                    p += 1
                    if loss and prev is not None:
                        ce_idx.append(prev)
                        ce_lab.append(tok)
                    prev = here
                split_lens.append(n)
                modes.append("causal")
                continue
            kind, img = item
            copies = [("noise", float(torch.rand((), generator=g)) * 0.9 + 0.05)] if kind == "gen" else []
            copies.append(("full", 0.0))
            if kind == "gen" and prev is not None:       # the modality switch: predict <|vision_start|>
                ce_idx.append(prev)
                ce_lab.append(VS_ID)
            for mode, t in copies:
                add_text(VS_ID, p)
                for j in range(hw):
                    lat_idx.append(off)
                    lat_img.append(img)
                    lat_patch.append(j)
                    lat_t.append(t)
                    lat_noised.append(mode == "noise")
                    pos.append(p)
                    off += 1
                last = add_text(VE_ID, p)
                split_lens.append(hw + 2)
                modes.append(mode)
            prev = last
            p += 1
        sample_lens.append(off - start)
    real = off
    if pad:
        for j in range(pad):
            add_text(PAD_ID, j)
        split_lens.append(pad)
        modes.append("causal")
        sample_lens.append(pad)
    L = off
    li = lambda xs: torch.tensor(xs, dtype=torch.int64)
    position_ids = li(pos)      # appended in sequence order, text and latents interleaved: (L,)
    return PackedBatch(
        seq_len=L, sample_lens=sample_lens, split_lens=split_lens, attn_modes=modes,
        text_ids=li(text_ids), text_indexes=li(text_idx), position_ids=position_ids,
        latent_indexes=li(lat_idx), latent_image_ids=li(lat_img), latent_patch_ids=li(lat_patch),
        latent_timesteps=torch.tensor(lat_t, dtype=torch.float32),
        latent_noised=torch.tensor(lat_noised, dtype=torch.bool), images=images,
        ce_indexes=li(ce_idx), ce_labels=li(ce_lab),
        num_real_tokens=real, num_samples=len(samples),
    )


def reference_mask(split_lens, modes, sample_lens) -> torch.Tensor:
    """docs/ARCHITECTURE.md's rule evaluated on every (q, k) pair: the test-side spec."""
    rep = lambda vals, lens: torch.repeat_interleave(torch.tensor(vals), torch.tensor(lens))
    split_id = rep(list(range(len(split_lens))), split_lens)
    sample_id = rep(list(range(len(sample_lens))), sample_lens)
    code = {"causal": 0, "full": 1, "noise": 2}
    mode = rep([code[m] for m in modes], split_lens)
    L = split_id.numel()
    q, k = torch.arange(L)[:, None], torch.arange(L)[None, :]
    same_split = split_id[:, None] == split_id[None, :]
    allowed = (sample_id[:, None] == sample_id[None, :]) & ((k <= q) | (same_split & (mode[None, :] != 0)))
    return allowed & ~((mode[None, :] == 2) & ~same_split)


def random_images(n: int, hw: tuple[int, int] = (8, 8), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, *hw, generator=g) * 2 - 1


DEFAULT_SPEC = [
    [("text", 5, False), ("text", 4, True), ("gen", 0), ("text", 3, True), ("ctx", 1), ("text", 2, True)],
    [("text", 3, False), ("gen", 2), ("text", 4, True)],
]


@pytest.fixture
def debug_cfg():
    return model_config("debug", vocab_size=VOCAB, attn_backend="sdpa")


@pytest.fixture
def pack():
    return build_pack(DEFAULT_SPEC, random_images(3), pad=5)


@pytest.fixture
def make_pack():
    """The builder itself (tests import nothing from conftest under --import-mode=importlib)."""
    return build_pack


@pytest.fixture
def ref_mask():
    return reference_mask


@pytest.fixture
def make_images():
    return random_images
