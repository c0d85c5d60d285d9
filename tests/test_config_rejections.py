"""Settings that used to be accepted and then failed late (after data preparation or a whole run)
are one-line errors at load time: exit status 2 from train/fit.py, nothing prepared."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from procpaint.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "train/configs/debug.yaml"


def _fit_main():
    spec = importlib.util.spec_from_file_location("fit_cli_rejections", ROOT / "train" / "fit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.mark.parametrize("override, message", [
    ("logging.checkpoint_every_n_steps=0", "logging.checkpoint_every_n_steps must be >= 1"),
    ("optim.lr=-1", "optim.lr must be a positive number"),
    ("optim.lr=0", "optim.lr must be a positive number"),
    ("trainer.max_steps=-5", "trainer.max_steps must be >= 1"),
    ("trainer.max_steps=-1", "trainer.max_steps must be >= 1"),
    ("data.max_tokens_per_sample=10", "data.max_tokens_per_sample (10) cannot hold one image"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches"),
    ("loss.max_nonfinite_steps=0", "loss.max_nonfinite_steps"),
    ("loss.timestep_mix_frac=1.5", "loss.timestep_mix_frac in [0, 1]"),
    ("optim.warmup_steps=-1", "optim.warmup_steps"),
    # a world the judge cannot separate, a model that cannot draw it
    ("data.image_size=16", "data.image_size (16) draws a small object 2.7 px across"),
    ("model.patch_size=16", "model.patch_size (16) makes latent tokens of 768 channels"),
    ("sampling.cfg_interval=[0.5,0.2]", "sampling: cfg_interval"),
])
def test_fit_rejects_at_load_time(tmp_path, capsys, override, message):
    cache = tmp_path / "cache"
    rc = _fit_main()(["--config", str(DEBUG), f"data.cache_dir={cache}",
                      f"trainer.default_root_dir={tmp_path / 'runs'}", override])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not cache.exists() and not (tmp_path / "runs").exists()          # no data preparation


def test_missing_base_names_the_file_that_references_it(tmp_path):
    child = tmp_path / "exp.yaml"
    child.write_text("base: nowhere.yaml\ntrainer:\n  max_steps: 3\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: base: 'nowhere\.yaml' not found"):
        load_config(child)
