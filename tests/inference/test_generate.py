"""The generation loop: cache equivalence, determinism, batching, modes and clean termination."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from procpaint.inference import GenerationConfig

FAST = GenerationConfig(num_steps=4, max_text_tokens=24)
CFG = replace(FAST, cfg_text_scale=2.0, cfg_image_scale=1.5, cfg_interval=(0.0, 1.0), cfg_renorm="global")


def summary(result):
    """What must agree between two runs: stage kinds and texts, end reason, pass counts."""
    return ([(s.kind, s.text) for s in result.stages], result.end_reason, result.forward_passes)


def assert_same(a, b, atol=1e-5):
    assert summary(a) == summary(b)
    for sa, sb in zip(a.stages, b.stages):
        if sa.image is not None:
            torch.testing.assert_close(sa.image, sb.image, atol=atol, rtol=0)


@pytest.mark.parametrize("cfg", [FAST, CFG, replace(CFG, cfg_renorm="token", cfg_interval=(0.3, 0.9))],
                         ids=["plain", "cfg-global", "cfg-token-interval"])
def test_cache_matches_recompute_over_four_rounds(gen, script, rounds, cfg):
    prompt = ["a photo of a red circle"]
    cached = gen.generate(prompt, cfg, logits_processor=script([rounds["four"]]))[0]
    full = gen.generate(prompt, replace(cfg, use_cache=False), logits_processor=script([rounds["four"]]))[0]
    assert cached.end_reason == "eos" and cached.num_images == 4
    assert [s.kind for s in cached.stages] == ["plan", "draft", "critique", "refine", "refined", "plan",
                                               "draft", "critique", "plan", "draft", "critique"]
    assert_same(cached, full)
    assert cached.model_tokens < full.model_tokens / 3      # the cache's whole point


def test_cache_matches_recompute_when_sampling(gen):
    cfg = replace(FAST, temperature=1.0, top_p=0.9, constrained=False, seed=3)
    a = gen.generate(["a photo of two blue squares"], cfg)[0]
    b = gen.generate(["a photo of two blue squares"], replace(cfg, use_cache=False))[0]
    assert_same(a, b)


def test_images_depend_on_context(gen, script, rounds):
    r = gen.generate(["a photo of a red circle"], FAST, logits_processor=script([rounds["four"]]))[0]
    imgs = [s.image for s in r.stages if s.image is not None]
    assert all(i.shape == (3, 16, 16) and i.abs().max() <= 1 for i in imgs)
    assert not torch.allclose(imgs[0], imgs[1])


def test_same_seed_same_result_other_seed_differs(gen):
    cfg = replace(FAST, temperature=1.0, seed=7)
    a, b = (gen.generate(["a photo of a red circle"], cfg)[0] for _ in range(2))
    assert_same(a, b, atol=0)
    c = gen.generate(["a photo of a red circle"], replace(cfg, seed=8))[0]
    assert summary(a)[0] != summary(c)[0]


def test_batch_equals_one_by_one(gen, script, rounds):
    prompts = ["a photo of a red circle", "a photo of two blue squares", "a photo of a green diamond"]
    scripts = [rounds["four"], rounds["two"], []]           # 4 images, 2 images, the model's own text
    batched = gen.generate(prompts, CFG, logits_processor=script(scripts))
    single = [gen.generate([p], CFG, logits_processor=script([s]))[0] for p, s in zip(prompts, scripts)]
    assert [r.num_images for r in batched] == [4, 2, 0]
    for a, b in zip(batched, single):
        assert_same(a, b)


def test_max_rounds_ends_the_loop(gen, script, encode):
    ids = encode(["<ins>add a circle</ins><des>a circle</des>", "VS", "the image matches"] * 10)
    r = gen.generate(["a photo of a circle"], replace(FAST, max_rounds=3), logits_processor=script([ids]))[0]
    assert r.end_reason == "max_rounds" and r.num_images == 3


def test_runaway_text_and_no_vision_start_end_cleanly(gen, tok):
    word = tok.encode("circle")[0]

    def never_draw(idx, history, logits):
        logits = logits.clone()
        logits[word] += 50.0                                # always the same word
        logits[tok.vision_start_id] -= 100.0
        return logits

    for constrained in (True, False):
        r = gen.generate(["a photo of a circle"], replace(FAST, constrained=constrained, max_text_tokens=10),
                         logits_processor=never_draw)[0]
        assert r.end_reason == "max_text_tokens" and r.num_images == 0 and r.final_image is None
        assert r.stages[-1].tokens == 10


def test_eos_before_any_image_is_no_image(gen, tok):
    def eos_now(idx, history, logits):
        logits = logits.clone()
        logits[tok.eos_id] += 100.0
        return logits

    r = gen.generate(["a photo of a circle"], replace(FAST, constrained=False), logits_processor=eos_now)[0]
    assert r.end_reason == "no_image" and r.stages == []
    # Constrained: a plan must open with <ins>, so EOS cannot come first.
    r = gen.generate(["a photo of a circle"], replace(FAST, max_text_tokens=4), logits_processor=eos_now)[0]
    assert r.stages[0].text.startswith("<ins>")


def test_constrained_plan_has_its_tags(gen, script, encode, tok):
    # Every other scripted token breaks the grammar; those are masked and the forced tag (or a
    # word) comes instead, so the plan is well formed and followed by an image.
    ids = encode(["<des>", "add", "VS", "</ins>", "EOS", "circle", "</des>", "circle", "</des>", "EOS"])
    r = gen.generate(["a photo of a circle"], replace(FAST, max_text_tokens=12),
                     logits_processor=script([ids]))[0]
    plan = r.stages[0].text.split()
    assert plan[:2] == ["<ins>", "add"] and plan[3:] == ["</ins>", "<des>", "circle", "</des>"]
    assert plan[2] not in ("<|vision_start|>", "<eos>") and r.stages[1].kind == "draft"
    assert r.end_reason == "eos" and r.num_images == 1


def test_single_pass_and_planner_modes(gen, script, rounds):
    sp = gen.generate(["a photo of a red circle"], replace(FAST, mode="single-pass"))[0]
    assert [s.kind for s in sp.stages] == ["image"] and sp.end_reason == "eos"
    assert sp.forward_passes == 1 + (FAST.num_steps - 1)           # prefill + Euler steps
    nc = gen.generate(["a photo of a red circle"], replace(FAST, mode="single-pass", use_cache=False))[0]
    assert_same(replace(sp, forward_passes=0), replace(nc, forward_passes=0))
    pl = gen.generate(["a photo of a red circle"], replace(FAST, mode="planner", max_rounds=2),
                      logits_processor=script([rounds["four"]]))[0]
    assert all(s.kind in ("plan", "draft") for s in pl.stages) and pl.num_images >= 1


def test_cfg_branches_change_the_image(gen, script, rounds):
    a = gen.generate(["a photo of a red circle"], FAST, logits_processor=script([rounds["two"]]))[0]
    b = gen.generate(["a photo of a red circle"], CFG, logits_processor=script([rounds["two"]]))[0]
    assert summary(a)[0] == summary(b)[0]
    assert not torch.allclose(a.final_image, b.final_image)


def test_timings_and_counts(gen, script, rounds):
    r = gen.generate(["a photo of a red circle"], FAST, logits_processor=script([rounds["two"]]))[0]
    assert r.forward_passes == sum(s.forward_passes for s in r.stages)
    assert r.seconds > 0 and abs(r.seconds - sum(s.seconds for s in r.stages)) < 1e-6
    draft = next(s for s in r.stages if s.kind == "draft")
    assert draft.forward_passes == FAST.num_steps     # N - 1 Euler steps + writing the clean image
    assert draft.tokens == 16


def test_bad_config_and_prompt(gen):
    from procpaint.sequence.tokenizer import UnknownWordsError
    with pytest.raises(UnknownWordsError, match="zebra"):
        gen.generate(["a photo of a zebra"], FAST)
    with pytest.raises(ValueError, match="num_steps"):
        gen.generate(["a photo of a circle"], replace(FAST, num_steps=1))
    with pytest.raises(ValueError, match="image_size"):
        gen.generate(["a photo of a circle"], replace(FAST, image_size=18))
