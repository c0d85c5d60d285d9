"""``finetune_from``: a run that starts from another run's weights, latent statistics and tokenizer
(the shared base of train/reproduce.py), and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from procpaint.config import ConfigError, load_config
from procpaint.sequence.tokenizer import TextTokenizer, build_word_level
from procpaint.training.run import _same_vocabulary, check_finetune, fit

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "train/configs/debug.yaml"
QUIET = ["logging.final_eval_prompts=0", "logging.trajectory_every_n_steps=0", "trainer.max_steps=2",
         "trainer.val_check_interval=2", "logging.checkpoint_every_n_steps=2"]


def _cfg(tmp, name, *overrides):
    return load_config(DEBUG, [f"trainer.default_root_dir={tmp / 'runs'}", f"logging.name={name}",
                               f"data.cache_dir={tmp / 'data' / name}", *QUIET, *overrides])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finetune")
    return tmp, fit(_cfg(tmp, "base", "data.trajectory=final_only", "data.subsets=[multiturn]"))


def test_finetune_starts_from_the_base_weights_and_statistics(base):
    tmp, res = base
    # Other data (process trajectories, another seed: other measured statistics); an lr of 1e-30
    # and no EMA: the fine-tune's weights can only be the base's if they were loaded.
    cfg = _cfg(tmp, "ft", "optim.lr=1e-30", "optim.ema_decay=0.0", "seed=3", "data.build_samples=40",
               f"finetune_from={res.checkpoint}")
    out = fit(cfg)
    got, want = load_file(out.weights), load_file(res.weights)
    assert set(got) == set(want)
    assert all(torch.allclose(got[k], want[k], rtol=0, atol=1e-20) for k in want)
    mc_base = json.loads((Path(res.weights).parent / "model_config.json").read_text())
    mc_ft = json.loads((Path(out.weights).parent / "model_config.json").read_text())
    assert mc_ft["latent_mean"] == mc_base["latent_mean"] and mc_ft["latent_std"] == mc_base["latent_std"]
    # train_summary.json: what each run consumed, for the equal-compute columns
    sb = json.loads((Path(res.log_dir) / "train_summary.json").read_text())
    sf = json.loads((Path(out.log_dir) / "train_summary.json").read_text())
    assert sb["steps"] == sf["steps"] == 2 and sb["packs"] == 2 and sb["finetune_from"] is None
    assert sf["finetune_from"] == str(res.checkpoint) and sf["seed"] == 3
    assert 0 < sb["real_tokens_per_step"] <= sb["packed_tokens_per_step"] == 1024
    # single-pass packs: every image is generated; process packs also carry context images
    assert sb["generated_images_per_step"] >= 1 and sb["seconds"] > 0
    assert sb["mse_tokens_per_step"] == pytest.approx(64 * sb["generated_images_per_step"])
    # ... and from an export directory the same way, now learning (lr > 0 moves the weights)
    out2 = fit(_cfg(tmp, "ft_export", f"finetune_from={Path(res.weights).parent}", "optim.ema_decay=0.0"))
    moved = load_file(out2.weights)
    assert any(not torch.equal(moved[k], want[k]) for k in want)


def test_finetune_refusals_name_the_key(base, tmp_path):
    tmp, res = base
    with pytest.raises(ConfigError, match="finetune_from=.*not found"):
        check_finetune(_cfg(tmp_path, "x", f"finetune_from={tmp_path / 'nope.ckpt'}"))
    with pytest.raises(ConfigError, match="finetune_from=.*another model.*hidden_size"):
        check_finetune(_cfg(tmp_path, "x", f"finetune_from={res.checkpoint}", "model.hidden_size=96"))
    with pytest.raises(ConfigError, match="finetune_from=.*image_size=32.*48"):
        check_finetune(_cfg(tmp_path, "x", f"finetune_from={res.checkpoint}", "data.image_size=48"))
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="finetune_from=.*not a readable"):
        check_finetune(_cfg(tmp_path, "x", f"finetune_from={bad}"))


def test_a_base_with_other_token_ids_is_refused():
    a = TextTokenizer(build_word_level(["red", "circle", "blue"]))
    b = TextTokenizer(build_word_level(["red", "circle", "blue", "apple"]))   # a new word shifts the ids
    _same_vocabulary(a, TextTokenizer(build_word_level(["red", "circle", "blue"])), "base.ckpt")
    with pytest.raises(ConfigError, match="finetune_from=base.ckpt: the data's tokenizer"):
        _same_vocabulary(a, b, "base.ckpt")
