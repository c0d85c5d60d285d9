"""The paper's rows as configs: each differs from process.yaml in exactly its ablation keys, and
contradictory ablation settings are rejected naming the key."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from procpaint.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "train" / "configs"

DIFFS = {
    "single_pass": {"subsets": ["multiturn"], "trajectory": "final_only"},
    "process_no_aug": {"edit_share": 0.0},
    "process_no_selfcritique": {"subsets": ["multiturn"], "self_critique": False, "refine_share": 0.0},
    "critique_scene_graph": {},
    "critique_self_sampled": {"conflict_source": "self",
                              "conflict_ckpt": "runs/reproduce/stage1_multiturn.ckpt"},
    "only_conflict": {"subsets": ["multiturn", "conflict"]},
    "only_alignment": {"subsets": ["multiturn", "alignment"]},
    "both": {},
    "stage1_multiturn": {"subsets": ["multiturn"]},
    "t2i_base": {"subsets": ["multiturn"], "trajectory": "final_only"},   # the shared base: single-pass data
}


@pytest.mark.parametrize("name", sorted(DIFFS))
def test_row_differs_from_process_only_in_its_ablation(name):
    ref = asdict(load_config(CONFIGS / "process.yaml"))
    cfg = asdict(load_config(CONFIGS / f"{name}.yaml"))
    assert cfg["logging"]["name"] == name and cfg["data"]["cache_dir"] == f"data_cache/{name}"
    for group in ("model", "optim", "loss", "trainer"):
        assert cfg[group] == ref[group], group                      # equal model and compute
    data = {k: v for k, v in cfg["data"].items() if k != "cache_dir" and ref["data"][k] != v}
    assert data == DIFFS[name]


@pytest.mark.parametrize("override,key", [
    ("data.trajectory=final_only", "data.trajectory"),                 # with critique subsets
    ("data.self_critique=false", "data.self_critique"),
    ("data.conflict_source=self", "data.conflict_ckpt"),
    ("data.conflict_source=gpt", "data.conflict_source"),
    ("data.edit_share=1.5", "data.edit_share"),
    ("data.fact_share=-0.1", "data.fact_share"),
    ("data.fact_share=0.6 data.knowledge_share=0.6", "data.fact_share"),
    ("data.trajectory=sketch", "data.trajectory"),
])
def test_contradictions_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(CONFIGS / "process.yaml", override.split())
