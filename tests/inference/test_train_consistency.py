"""Inference sees what training saw: the engine's velocities and logits equal the training forward's.

The training forward embeds a :class:`PackedBatch` (planner layout, packed masks, routing); the
inference engine embeds its own segments with its own masks. Both must give the same numbers for the
same sequence, or a model that trains well samples badly. The engine's segments are read off the
packed batch split by split, so any difference in embeddings, RoPE ids, masks or expert routing
shows up here.
"""

from __future__ import annotations

import pytest
import torch

from procpaint.inference.engine import Engine, ImageSpan, Query, TextSpan
from procpaint.sequence.packing import Packer
from procpaint.sequence.types import ImageSegment, Sample, TextSegment


def _image(seed: int, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((3, size, size), generator=g) * 2 - 1


def _sample() -> Sample:
    return Sample([
        TextSegment("a photo of a red circle left of a blue square", role="prompt"),
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
    h, w = model.codec.grid(b.images.shape[-2], b.images.shape[-1])
    segs, start = [], 0
    for n, mode in zip(b.split_lens, b.attn_modes):
        if start >= b.sample_lens[0]:
            break
        pos = int(b.position_ids[start])
        if mode == "causal":
            segs.append(TextSpan([text_at[p] for p in range(start, start + n)], pos))
        else:
            image = img_of[start + 1]
            rows = [lat_row[p] for p in range(start + 1, start + n - 1)]
            if mode == "noise":
                segs.append(ImageSpan(noise_z[image], times[image], pos, (h, w), noise=True))
            else:
                segs.append(ImageSpan(clean[rows], 0.0, pos, (h, w), noise=False))
        start += n
    return segs


@pytest.mark.parametrize("mot,prediction", [(True, "velocity"), (False, "velocity"), (True, "clean")])
def test_engine_matches_training_forward(tok, mot, prediction):
    from procpaint.model import build_model, model_config

    torch.manual_seed(0)
    model = build_model(model_config("debug", vocab_size=tok.vocab_size, attn_backend="sdpa", patch_size=4,
                                     mot=mot, prediction=prediction))
    torch.nn.init.normal_(model.llm2vae.weight, std=0.05)
    model.eval()
    packer = Packer(tok, pixels_per_token=model.cfg.pixels_per_token, max_tokens=512, pad_to_budget=True)
    (b,) = list(packer.pack_stream([_sample()]))
    assert b.sample_lens[0] < b.seq_len           # a padding sample follows: it must not matter

    # Fixed, distinct flow times per generated image; the training forward mixes the noise in.
    noised = b.latent_noised
    times = {0: 0.8, 1: 0.35}
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
