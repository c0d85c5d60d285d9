"""Paired differences against the baseline, seed pairing and the protocol's table sections."""

from __future__ import annotations

import json

import pytest

from procpaint.evaluation import tables
from procpaint.evaluation.runner import paired_difference, summarize


def _results(tag_hits: dict[str, list[bool]]) -> list[dict]:
    return [{"tag": tag, "prompt": f"{tag} prompt {i}", "correct": ok}
            for tag, hits in tag_hits.items() for i, ok in enumerate(hits)]


def test_identical_runs_differ_by_exactly_nothing():
    r = _results({"position": [True, False] * 20, "colors": [True] * 30 + [False] * 10})
    d = paired_difference("geneval", r, r)
    assert d["diff"] == {"colors": 0.0, "position": 0.0, "overall": 0.0}
    assert all(ci == [0.0, 0.0] for ci in d["ci95"].values())
    assert set(d["inside_noise"]) == {"colors", "position", "overall"} and d["prompts"] == 80


def test_pairing_separates_what_unpaired_intervals_cannot():
    # The other run gets four more of the same 40 prompts right: a +0.10 that every resample of the
    # shared prompts sees (the chance that none of the four is drawn is 1.5%, under 2.5%).
    base = _results({"position": [True] * 20 + [False] * 20})
    other = _results({"position": [True] * 24 + [False] * 16})
    d = paired_difference("geneval", base, other)
    assert d["diff"]["position"] == pytest.approx(0.10)
    lo, hi = d["ci95"]["position"]
    assert 0 < lo <= 0.10 <= hi and d["inside_noise"] == []
    ca, cb = summarize("geneval", base)["ci95"]["position"], summarize("geneval", other)["ci95"]["position"]
    assert ca[1] > cb[0]                                   # the unpaired intervals overlap
    # a real regression is negative and excludes 0 the same way
    assert paired_difference("geneval", other, base)["ci95"]["position"][1] < 0


def test_only_shared_prompts_are_compared():
    base = _results({"colors": [True] * 10})
    other = _results({"colors": [False] * 10}) + [{"tag": "colors", "prompt": "only here", "correct": True}]
    d = paired_difference("geneval", base, other)
    assert d["prompts"] == 10 and d["diff"]["colors"] == -1.0


def _scored(out, run, mode, hits, train=None):
    folder = out / run / mode / "geneval"
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _results(hits)))
    if train:
        (out / run / "train_summary.json").write_text(json.dumps(train))


def test_rows_pair_with_the_baseline_of_their_seed_and_tables_say_so(tmp_path):
    train = {"steps": 4, "seed": 0, "finetune_from": "/x/ckpt/base.ckpt", "packed_tokens_per_step": 512,
             "real_tokens_per_step": 500, "generated_images_per_step": 3.0, "ce_tokens_per_step": 40,
             "mse_tokens_per_step": 192, "seconds": 1.5}
    _scored(tmp_path, "single_pass", "single-pass", {"position": [True] * 10 + [False] * 30}, train)
    _scored(tmp_path, "single_pass_s1", "single-pass", {"position": [True] * 20 + [False] * 20})
    _scored(tmp_path, "process", "process", {"position": [True] * 30 + [False] * 10}, train)
    _scored(tmp_path, "process_s1", "process", {"position": [True] * 20 + [False] * 20})
    _scored(tmp_path, "process_no_aug", "process", {"position": [True] * 10 + [False] * 30})
    rows = tables.collect(tmp_path)
    comp = {c["run"]: c for c in tables.comparisons(rows)}
    assert set(comp) == {"process", "process_s1", "process_no_aug"}
    assert comp["process"]["baseline"] == "single_pass" and comp["process"]["diff"]["position"] == 0.5
    assert comp["process_s1"]["baseline"] == "single_pass_s1" and comp["process_s1"]["diff"]["position"] == 0.0
    assert comp["process_no_aug"]["baseline"] == "single_pass"          # no seed-0 suffix: seed 0
    assert "position" in comp["process_s1"]["inside_noise"]
    md = tables.markdown(rows)
    assert "## Seeds" in md and "s0: 0.75, s1: 0.50" in md          # process: overall = position here
    assert "## Against the single-pass baseline" in md and "+0.50" in md
    assert "## Training compute" in md and "| base |" in md
    assert tables.family("process_s12") == ("process", 12) and tables.family("both") == ("both", 0)
