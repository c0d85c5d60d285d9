"""Sampling flags: the checkpoint's training-config `sampling` group is the default, a flag wins,
bad values name their flag; the config group itself is validated when loaded."""

from __future__ import annotations

import argparse

import pytest

from procpaint.config import ConfigError, load_config
from procpaint.inference.options import add_sampling_args, generation_config

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def _args(*argv):
    p = argparse.ArgumentParser()
    add_sampling_args(p)
    return p.parse_args(list(argv))


def test_checkpoint_sampling_is_the_default_and_flags_win():
    ckpt = {"num_steps": 12, "cfg_text_scale": 2.5, "cfg_interval": [0.1, 0.9], "unknown_key": 1}
    cfg = generation_config(_args(), ckpt, mode="single-pass", seed=3)
    assert (cfg.num_steps, cfg.cfg_text_scale, cfg.cfg_interval, cfg.mode, cfg.seed) == \
        (12, 2.5, (0.1, 0.9), "single-pass", 3)
    cfg = generation_config(_args("--cfg-text", "4", "--steps", "7", "--cfg-interval", "0", "0.5",
                                  "--cfg-renorm", "token"), ckpt)
    assert (cfg.num_steps, cfg.cfg_text_scale, cfg.cfg_interval, cfg.cfg_renorm) == \
        (7, 4.0, (0.0, 0.5), "token")
    assert generation_config(_args(), None).num_steps == 50                       # GenerationConfig's own


def test_bad_flags_name_the_flag():
    with pytest.raises(ValueError, match="--cfg-interval"):
        generation_config(_args("--cfg-interval", "0.8", "0.2"))
    with pytest.raises(ValueError, match="--steps"):
        generation_config(_args("--steps", "1"))


def test_training_config_sampling_group_is_checked():
    cfg = load_config(ROOT / "train/configs/default.yaml", ["sampling.cfg_text_scale=3.0"])
    g = cfg.sampling.generation_config(mode="process")
    assert g.cfg_text_scale == 3.0 and g.mode == "process"
    with pytest.raises(ConfigError, match="sampling"):
        load_config(ROOT / "train/configs/default.yaml", ["sampling.cfg_interval=[0.9,0.1]"])
    with pytest.raises(ConfigError, match="sampling"):
        load_config(ROOT / "train/configs/default.yaml", ["sampling.num_steps=1"])
