"""Generation with the ViT path (model.vit, issue 13): every committed image is also read through the
ViT, so the Inspect critique reads the draft as BAGEL does; cached and recomputed contexts agree."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from procpaint.inference import GenerationConfig, Painter
from procpaint.inference.engine import VitSpan
from procpaint.model import build_model, model_config
from procpaint.model.vit import vit_inputs

FAST = GenerationConfig(num_steps=3, max_text_tokens=24)
CFG = replace(FAST, cfg_text_scale=2.0, cfg_image_scale=1.5, cfg_interval=(0.0, 1.0))


@pytest.fixture(scope="module")
def vit_gen(tok) -> Painter:
    torch.manual_seed(0)
    m = build_model(model_config("debug-vit", vocab_size=tok.vocab_size, attn_backend="sdpa", patch_size=4))
    torch.nn.init.normal_(m.llm2vae.weight, std=0.05)
    return Painter(m.eval(), tok, image_size=16)        # 4 x 4 latent tokens, 4 x 4 ViT patches


def _recording(scripted, script):
    """A scripted logits processor that also keeps every logits vector it was given, in order."""
    proc, seen = scripted([script]), []

    def wrapped(idx, history, logits):
        seen.append(logits.clone())
        return proc(idx, history, logits)

    return wrapped, seen


@pytest.mark.parametrize("cfg", [FAST, CFG], ids=["plain", "cfg"])
def test_cache_matches_recompute_with_vit_splits(vit_gen, script, rounds, cfg):
    prompt = ["a photo of a red circle"]
    cached = vit_gen.generate(prompt, cfg, logits_processor=script([rounds["four"]]))[0]
    full = vit_gen.generate(prompt, replace(cfg, use_cache=False), logits_processor=script([rounds["four"]]))[0]
    assert cached.end_reason == "eos" and cached.num_images == 4
    assert [(s.kind, s.text) for s in cached.stages] == [(s.kind, s.text) for s in full.stages]
    for a, b in zip(cached.stages, full.stages):
        if a.image is not None:
            torch.testing.assert_close(a.image, b.image, atol=1e-5, rtol=0)


def test_each_committed_image_is_read_through_the_vit(vit_gen, script, rounds, tok, monkeypatch):
    calls = []
    real = VitSpan.of_image.__func__

    def spy(cls, image, pos, cfg):
        span = real(cls, image, pos, cfg)
        calls.append((image.clone(), pos, span))
        return span

    monkeypatch.setattr(VitSpan, "of_image", classmethod(spy))
    res = vit_gen.generate(["a photo of a red circle"], FAST, logits_processor=script([rounds["two"]]))[0]
    images = [s.image for s in res.stages if s.image is not None]
    assert len(images) == 2 and len(calls) == 2
    for img, (seen, pos, span) in zip(images, calls):
        torch.testing.assert_close(seen.cpu(), img)          # the decoded draft, as the user gets it
        patches, ids, _ = vit_inputs(img, 4, 16)
        torch.testing.assert_close(span.patches.cpu(), patches)
        assert torch.equal(span.ids.cpu(), ids) and span.num_tokens == 16 + 2
    # RoPE ids as the packer lays them out: image j's clean copy takes one id (where its
    # <|vision_start|> is), its ViT split the next, so each earlier image shifts the text by one
    n_prompt = len(tok.encode("a photo of a red circle"))
    vs_at = [k for k, t in enumerate(rounds["two"]) if t == tok.vision_start_id]
    assert [pos for _, pos, _ in calls] == [n_prompt + k + j + 1 for j, k in enumerate(vs_at)]


def test_the_critique_reads_the_draft_through_the_vit(vit_gen, script, rounds, tok, monkeypatch):
    """Same draft, different ViT input: the text after the draft changes; the text before it does not."""
    def run():
        proc, seen = _recording(script, rounds["two"])
        return vit_gen.generate(["a photo of a red circle"], FAST, logits_processor=proc)[0], seen

    base, seen_base = run()
    real = VitSpan.of_image.__func__
    monkeypatch.setattr(VitSpan, "of_image", classmethod(lambda cls, image, pos, cfg: real(cls, -image, pos, cfg)))
    other, seen_other = run()
    draft = next(s for s in base.stages if s.kind == "draft")
    torch.testing.assert_close(next(s for s in other.stages if s.kind == "draft").image, draft.image)
    n_plan = rounds["two"].index(tok.vision_start_id) + 1     # tokens sampled up to the draft
    assert len(seen_base) == len(seen_other) > n_plan
    for a, b in zip(seen_base[:n_plan], seen_other[:n_plan]):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(seen_base[n_plan], seen_other[n_plan])     # the critique's first token
