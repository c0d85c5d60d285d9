"""The oracle inspector: the exact judge's critique of a draft, fed to the model as its Inspect step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from procpaint.evaluation.oracle import OracleInspector
from procpaint.world import Renderer, realize
from procpaint.world.language import parse_prompt
from procpaint.world.render import to_tensor_range

PROMPT = "a photo of a red circle"
PLAN = "<ins> draw one large red circle </ins> <des> a large red circle </des>"


def _render(prompt: str, seed: int = 0) -> torch.Tensor:
    state = realize(parse_prompt(prompt), np.random.default_rng(seed))
    return torch.from_numpy(to_tensor_range(Renderer(64).paint(state, seed)))


def test_oracle_says_what_the_judge_sees():
    oracle = OracleInspector()
    right = oracle(PROMPT, "<ins> draw one red circle </ins> <des> a red circle </des>", _render(PROMPT))
    assert right.startswith("the image matches the plan"), right
    wrong = oracle(PROMPT, "<ins> draw one red circle </ins> <des> a red circle </des>",
                   _render("a photo of a blue square"))
    assert wrong.startswith("the image does not match the plan") and len(wrong.split()) > 8, wrong
    # an unreadable plan: judged against the prompt; neither readable: the plain verdict
    assert oracle(PROMPT, "<ins> garbled", _render(PROMPT)).startswith("the image matches the plan")
    unreadable = oracle("paint the sun's colour", "garbled", _render(PROMPT))
    assert unreadable == "the image does not match the plan."
    assert oracle.calls == 4


def test_generator_feeds_the_critic_text_after_each_draft():
    """The critic's words become the critique stage verbatim (fed, not sampled); the model continues."""
    from procpaint.inference import GenerationConfig, Painter
    from procpaint.model import build_model, model_config
    from procpaint.sequence.tokenizer import TextTokenizer, build_word_level
    from procpaint.world import vocabulary

    tok = TextTokenizer(build_word_level(vocabulary()))
    torch.manual_seed(0)
    model = build_model(model_config("debug", vocab_size=tok.vocab_size, attn_backend="sdpa", patch_size=4))
    gen = Painter(model.eval(), tok, image_size=16)
    plan, vs, eos = tok.encode(PLAN) + [tok.vision_start_id], [tok.vision_start_id], [tok.eos_id]
    refine = tok.encode("<refine> make it blue </refine>")
    calls = []

    def critic(prompt, plan_text, image):
        calls.append((prompt, plan_text, tuple(image.shape)))
        return "the image does not match the plan . the circle is red but should be blue ."

    def follow(script):                        # the model's sampled tokens follow a script
        k = [0]

        def proc(idx, history, logits):
            logits = logits.clone()
            if k[0] < len(script):
                logits[script[k[0]]] += 50.0
            k[0] += 1
            return logits
        return proc

    cfg = GenerationConfig(num_steps=3, max_text_tokens=32)
    out = gen.generate([PROMPT], cfg, logits_processor=follow(plan + refine + vs + eos), critic=critic)[0]
    kinds = [s.kind for s in out.stages]
    assert kinds == ["plan", "draft", "critique", "refine", "refined"], kinds
    assert out.stages[2].text == "the image does not match the plan. the circle is red but should be blue."
    assert calls == [(PROMPT, out.stages[0].text, (3, 16, 16))]
    assert out.end_reason == "eos" and out.num_images == 2
    # without a critic the model samples its own critique (here: scripted to say "fine")
    own = gen.generate([PROMPT], cfg, logits_processor=follow(
        plan + tok.encode("the image matches the plan") + refine + vs + eos))[0]
    assert own.stages[2].text == "the image matches the plan"


def test_evaluate_oracle_mode_uses_the_inspector(tmp_path, oracle, monkeypatch):
    import importlib.util
    from pathlib import Path

    from procpaint.evaluation import geneval
    from procpaint.inference.types import Stage, TrajectoryResult

    spec = importlib.util.spec_from_file_location("evaluate_cli", Path(__file__).resolve().parents[2]
                                                  / "train" / "evaluate.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    meta = geneval.generate_metadata({"single_object": 2}, seed=3)
    monkeypatch.setattr(cli, "metadata_for", lambda b, **_: meta)
    seen = []

    class Gen:
        def generate(self, prompts, config, critic=None):
            seen.append((config.mode, critic is not None))
            img = torch.from_numpy(to_tensor_range(oracle(meta[0], 0)))
            return [TrajectoryResult(p, config.mode, [Stage("draft", image=img)]) for p in prompts]

    cli.evaluate([("m", Gen())], tmp_path, benchmarks=("geneval",), modes=("process", "oracle"),
                 images_per_prompt=1, show_progress=False)
    assert seen == [("process", False), ("process", True)]
    assert (tmp_path / "m" / "oracle" / "geneval" / "results.jsonl").is_file()
    with pytest.raises(SystemExit):
        cli.main(["--mode", "nope"])


def test_oracle_names_counts_beyond_the_worlds_numbers():
    """A draft of twelve blobs: the world counts to nine, so the critique says nine (and stays readable)."""
    from procpaint.world.detect import Detection

    class Twelve:
        def detect(self, image):
            return [Detection("circle", "red", "large", i // 3, i % 3, 0.0, 0.0, 4.0, 0.0, 50.0)
                    for i in range(12)]

    text = OracleInspector(Twelve())(PROMPT, PLAN, torch.zeros(3, 16, 16))
    assert text.startswith("the image does not match the plan") and "nine" in text.split(), text
