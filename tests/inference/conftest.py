"""Fixtures for inference tests: a randomly initialised debug model and scripted trajectories.

A random model's text is noise, so multi-round trajectories are scripted with a logits processor
that adds a large bias to the next token of a per-prompt script (tokens, ``<|vision_start|>`` and
EOS included). The processor is called once per sampled token, in the same order with or without
the cache and in or out of a batch, so every mode follows the same script while the images still
come from the model.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from procpaint.inference import Painter
from procpaint.model import build_model, model_config
from procpaint.sequence.tokenizer import TextTokenizer, build_word_level
from procpaint.world import vocabulary


@pytest.fixture(scope="session")
def tok() -> TextTokenizer:
    return TextTokenizer(build_word_level(vocabulary()))


@pytest.fixture(scope="session")
def model(tok):
    torch.manual_seed(0)
    m = build_model(model_config("debug", vocab_size=tok.vocab_size, attn_backend="sdpa", patch_size=4))
    # llm2vae starts at zero (velocity 0): give it weights so images depend on the context.
    torch.nn.init.normal_(m.llm2vae.weight, std=0.05)
    return m.eval()


@pytest.fixture(scope="session")
def gen(model, tok) -> Painter:
    return Painter(model, tok, image_size=16)        # 4 x 4 latent tokens


def encode_script(tok: TextTokenizer, parts: list[str]) -> list[int]:
    """Text parts -> ids; the part "VS" is <|vision_start|>, "EOS" is EOS."""
    ids = []
    for p in parts:
        ids += [tok.vision_start_id] if p == "VS" else [tok.eos_id] if p == "EOS" else tok.encode(p)
    return ids


ROUNDS4 = ["<ins>add a red circle</ins><des>a red circle</des>", "VS",
           "the image is missing a circle", "<refine>add a blue circle</refine>", "VS",
           "<ins>add a green diamond</ins><des>a green diamond</des>", "VS",
           "the image matches the plan", "<ins>make it large</ins><des>a large circle</des>", "VS",
           "the image matches", "EOS"]
ROUNDS2 = ["<ins>add a circle</ins><des>a circle</des>", "VS", "the image matches",
           "<refine>make it blue</refine>", "VS", "EOS"]


def scripted(scripts: list[list[int]], bias: float = 50.0):
    """A fresh logits processor following ``scripts[i]`` for prompt i (then the model's own choice)."""
    calls: dict[int, int] = defaultdict(int)

    def proc(idx: int, history: list[int], logits: torch.Tensor) -> torch.Tensor:
        k = calls[idx]
        calls[idx] += 1
        script = scripts[idx % len(scripts)]
        if k < len(script):
            logits = logits.clone()
            logits[script[k]] += bias
        return logits

    return proc


@pytest.fixture
def script():
    return scripted


@pytest.fixture
def encode(tok):
    return lambda parts: encode_script(tok, parts)


@pytest.fixture
def rounds(tok):
    return {"four": encode_script(tok, ROUNDS4), "two": encode_script(tok, ROUNDS2)}


@pytest.fixture(autouse=True)
def one_thread():
    # Decoding runs many tiny matmuls: on a busy 2-core runner OpenMP's spin-waiting costs ~100x.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
