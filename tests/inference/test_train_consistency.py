"""Inference sees what training saw: the engine's velocities and logits equal the training forward's.

The training forward embeds a :class:`PackedBatch` (planner layout, packed masks, routing); the
inference engine embeds its own segments with its own masks. Both must give the same numbers for the
same sequence, or a model that trains well samples badly. The engine's segments are read off the
packed batch split by split, so any difference in embeddings, RoPE ids, masks or expert routing
shows up here. With the ViT path (``debug-vit``) every clean image is followed by its ViT split in
both, and the critique after a draft is predicted by that split's ``<|vision_end|>``.
"""

from __future__ import annotations

import pytest
import torch

from procpaint.inference.engine import Engine, ImageSpan, Query, TextSpan, VitSpan
from procpaint.sequence.packing import Packer
from procpaint.sequence.plan import ViTSplits
from procpaint.sequence.types import ImageSegment, Sample, TextSegment


def _image(seed: int, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((3, size, size), generator=g) * 2 - 1


def _sample(context: bool = False) -> Sample:
    ctx = [ImageSegment(_image(3)), TextSegment("the image is missing a blue square", role="critique")]
    return Sample([
        TextSegment("a photo of a red circle left of a blue square", role="prompt"),
        *(ctx if context else []),
        TextSegment("<ins> add a red circle </ins> <des> a red circle </des>", loss=True, role="plan"),
        ImageSegment(_image(1), loss=True),
        TextSegment("the image is missing a blue square", loss=True, role="critique"),
        TextSegment("<refine> add a blue square </refine>", loss=True, role="refine"),
        ImageSegment(_image(2), loss=True),
    ], eos=True)


def _engine_segments(b, model, times: dict[int, float], noise_z: dict[int, torch.Tensor]):
    """The packed batch's first sample, split by split, as engine segments."""
    text_at = dict(zip(b.text_indexes.tolist(), b.text_ids.tolist()))
    clean, _ = model.encode_latents(b)
    img_of = dict(zip(b.latent_indexes.tolist(), b.latent_image_ids.tolist()))
    lat_row = {p: i for i, p in enumerate(b.latent_indexes.tolist())}
    vit_row = {p: i for i, p in enumerate(b.vit_indexes.tolist())}
    h, w = model.codec.grid(b.images.shape[-2], b.images.shape[-1])
    segs, start = [], 0
    for n, mode in zip(b.split_lens, b.attn_modes):
        if start >= b.sample_lens[0]:
            break
        pos = int(b.position_ids[start])
        if mode == "causal":
            segs.append(TextSpan([text_at[p] for p in range(start, start + n)], pos))
        elif start + 1 in vit_row:
            rows = [vit_row[p] for p in range(start + 1, start + n - 1)]
            segs.append(VitSpan(b.vit_patches[rows], b.vit_position_ids[rows], pos))
        else:
            image = img_of[start + 1]
            rows = [lat_row[p] for p in range(start + 1, start + n - 1)]
            if mode == "noise":
                segs.append(ImageSpan(noise_z[image], times[image], pos, (h, w), noise=True))
            else:
                segs.append(ImageSpan(clean[rows], 0.0, pos, (h, w), noise=False))
        start += n
    return segs


@pytest.mark.parametrize("preset,mot,prediction", [("debug", True, "velocity"), ("debug", False, "velocity"),
                                                   ("debug", True, "clean"), ("debug-vit", True, "velocity"),
                                                   ("debug-vit", False, "velocity")])
def test_engine_matches_training_forward(tok, preset, mot, prediction):
    from procpaint.model import build_model, model_config

    torch.manual_seed(0)
    model = build_model(model_config(preset, vocab_size=tok.vocab_size, attn_backend="sdpa", patch_size=4,
                                     mot=mot, prediction=prediction))
    torch.nn.init.normal_(model.llm2vae.weight, std=0.05)
    model.eval()
    vit = ViTSplits.from_model_config(model.cfg)
    packer = Packer(tok, pixels_per_token=model.cfg.pixels_per_token, max_tokens=640, pad_to_budget=True,
                    vit=vit)
    (b,) = list(packer.pack_stream([_sample(context=vit is not None)]))
    if vit is not None:                           # a context image and two drafts, each read by the ViT
        assert b.vit_seqlens == [16, 16, 16]
    assert b.sample_lens[0] < b.seq_len           # a padding sample follows: it must not matter

    # Fixed, distinct flow times per generated image; the training forward mixes the noise in.
    noised = b.latent_noised
    times = {i: t for i, t in zip(b.latent_image_ids[noised].unique().tolist(), (0.8, 0.35))}
    lt = b.latent_timesteps.clone()
    for image, t in times.items():
        lt[noised & (b.latent_image_ids == image)] = t
    b.latent_timesteps = lt
    m_rows = noised.nonzero().squeeze(1)
    noise = torch.randn(m_rows.numel(), model.cfg.latent_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(b, noise=noise)
    z_noised = out.timesteps[:, None] * out.noise + (1 - out.timesteps[:, None]) * out.clean   # (M, D_lat)
    img_m = b.latent_image_ids[m_rows]
    noise_z = {i: z_noised[img_m == i] for i in times}

    engine = Engine(model, tok.vision_start_id, tok.vision_end_id)
    segs = _engine_segments(b, model, times, noise_z)
    (hidden,) = engine.run([Query(segs)])                                                       # (L0, D)
    assert hidden.shape[0] == b.sample_lens[0]

    v_engine = model.predict_velocity(hidden[b.mse_indexes], z_noised, out.timesteps)
    torch.testing.assert_close(v_engine, out.v_pred, rtol=1e-4, atol=1e-5)
    logits = model.lm_head(hidden[b.ce_indexes])
    torch.testing.assert_close(logits, out.ce_logits, rtol=1e-4, atol=1e-5)
    # and the label rule the generator follows: the last plan token predicts <|vision_start|>
    assert (b.ce_labels == tok.vision_start_id).sum() == 2
    if vit is not None:                           # the critique after the draft reads it through the ViT
        (pred,) = b.ce_indexes[b.ce_labels == tok.encode("the image is missing a blue square")[0]].tolist()
        vit_rows = b.vit_indexes.tolist()
        assert pred - 1 in vit_rows and pred not in vit_rows     # its <|vision_end|>
