"""Every YAML in the repo loads and validates; typos, wrong types and contradictions are errors
that name the key."""

import subprocess
import sys
from pathlib import Path

import pytest

from procpaint.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "train" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_loads(path):
    cfg = load_config(path)
    mc = cfg.model_config(vocab_size=100)
    assert mc.vocab_size == 100
    assert cfg.data.image_size % mc.pixels_per_token == 0


def test_debug_holds_only_differences():
    cfg = load_config(ROOT / "train/configs/debug.yaml")
    assert cfg.model.preset == "debug"
    assert cfg.optim.schedule == load_config(ROOT / "train/configs/default.yaml").optim.schedule


@pytest.mark.parametrize("override,key", [
    ("trainer.max_stepz=3", "max_stepz"),
    ("trainer.max_steps=many", "trainer.max_steps"),
    ("model.hidden_sise=8", "hidden_sise"),
    ("data.p_drop_text=1.5", "data.p_drop_text"),
    ("model.preset=huge", "model.preset"),
    ("data.image_size=15", "data.image_size"),
    ("model.num_heads=3", "model.num_heads"),
    ("optim.schedule=linear", "optim.schedule"),
    ("data.max_tokens=8", "data.max_tokens"),
    ("nonsense", "key=value"),
])
def test_bad_overrides_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(ROOT / "train/configs/default.yaml", [override])


def test_bad_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: 3\n  precison: bf16-mixed\n")
    with pytest.raises(ConfigError, match="precison"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(broken)
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(loop)


def test_fit_cli_rejects_typo_with_exit_2():
    proc = subprocess.run([sys.executable, str(ROOT / "train/fit.py"), "trainer.max_stepz=3"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert "max_stepz" in proc.stderr
