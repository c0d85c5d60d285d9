"""Self-sampled conflict data: a tiny random-init model exported like train/fit.py, its plans scripted.

A random model's words are noise, so the model's text is steered with a logits processor (a large
bias on the next token of a per-prompt script, as tests/inference does): per prompt, by a hash of
its text, the trajectory is contradicting (3/6: a partial plan, then the full scene with one object
changed into another shape), consistent (2/6: partial plan, then the full one) or unparseable (1/6).
Images still come from the model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import zlib
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from procpaint.datasets import build_dataset, preset, validate
from procpaint.datasets import self_sample as S
from procpaint.datasets.records import is_positive
from procpaint.model import build_model, model_config
from procpaint.sequence.tokenizer import TextTokenizer, build_word_level
from procpaint.world import (
    Add,
    SymbolicJudge,
    parse_critique,
    parse_prompt,
    parse_refine,
    plan_text,
    vocabulary,
)
from procpaint.world.prompts import is_heldout
from procpaint.world.scene import SHAPES, State, realize

ROOT = Path(__file__).resolve().parents[2]
# heldout_fraction 0.5: half the prompt space is held out, so leaking it would show at once.
CFG = preset("tiny", conflict=10, shard_size=5, heldout_fraction=0.5, self_rounds=3, self_attempts=10,
             self_batch=4, verify_images=1.0)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """An export directory as training/run.py's export_weights writes it (random debug weights)."""
    from safetensors.torch import save_file

    tok = TextTokenizer(build_word_level(vocabulary()))
    torch.manual_seed(0)
    m = build_model(model_config("debug", vocab_size=tok.vocab_size, attn_backend="sdpa", patch_size=4))
    out = tmp_path_factory.mktemp("ckpt") / "export"
    out.mkdir()
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(out / "model.safetensors"))
    (out / "model_config.json").write_text(json.dumps(asdict(m.cfg)))
    (out / "config.yaml").write_text("data:\n  image_size: 16\n")
    tok.save(out / "tokenizer.json")
    return out


def script_plans(prompt: str) -> tuple[str, list[str]]:
    """(kind, plan texts) the scripted model writes for ``prompt``."""
    spec = parse_prompt(prompt)
    kind = ("contradicting",) * 3 + ("consistent",) * 2 + ("unparseable",)
    kind = kind[zlib.crc32(prompt.encode()) % 6]
    if kind == "unparseable":
        return kind, ["<ins>draw draw</ins><des>circle the</des>"]
    full = realize(spec, np.random.default_rng(0))
    objs = [p.obj for p in full.objects]
    plans = []
    if len(objs) > 1:
        plans.append(plan_text((Add(objs[:1]),), State(full.objects[:1]).spec()))
    if kind == "contradicting":
        p0 = full.objects[0]
        other = next(s for s in SHAPES if s not in {o.shape for o in objs})
        full = State((replace(p0, shape=other), *full.objects[1:]), full.relations)
    plans.append(plan_text((Add(tuple(objs[1:] or objs)),), full.spec()))
    return kind, plans


@pytest.fixture
def scripted(monkeypatch):
    """Route the builder's generate() calls through the per-prompt scripts."""
    calls = []

    def generate(gen, prompts, gcfg):
        tok = gen.tok
        scripts = []
        for p in prompts:
            ids = []
            for plan in script_plans(p)[1]:
                ids += [*tok.encode(plan), tok.vision_start_id]
            scripts.append([*ids, tok.eos_id])
        seen = defaultdict(int)

        def proc(idx, history, logits):
            k = seen[idx]
            seen[idx] += 1
            if k < len(scripts[idx]):
                logits = logits.clone()
                logits[scripts[idx][k]] += 50.0
            return logits

        calls.append((list(prompts), gcfg))
        return gen.generate(prompts, gcfg, logits_processor=proc)

    monkeypatch.setattr(S, "_generate", generate)
    torch.set_num_threads(1)                  # tiny decoding matmuls: OpenMP spin-waits cost more
    return calls


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _records(out: Path, man: dict) -> list[dict]:
    return [json.loads(line) for s in man["subsets"]["conflict"]["shards"]
            for line in (out / s).read_text().splitlines()]


@pytest.fixture
def built(tmp_path, export, scripted):
    out = tmp_path / "ds"
    man = build_dataset(out, "conflict", CFG, progress=False, checkpoint=export)
    return out, man, scripted


def test_records_validate_and_follow_the_judge(built):
    out, man, calls = built
    assert validate(out) == []
    sub = man["subsets"]["conflict"]
    assert sub["config"]["conflict_source"] == "self" and len(sub["checkpoint"]["sha256"]) == 64
    assert all(g.mode == "planner" and g.num_steps == 2 and g.max_rounds == 3 for _, g in calls)
    judge = SymbolicJudge()
    recs = _records(out, man)
    assert len(recs) == sub["samples"] == 10
    for rec in recs:
        segs = rec["segments"]
        assert segs[0] == {"type": "text", "role": "prompt", "text": rec["prompt"], "loss": False}
        plans = [s for s in segs if s["role"] == "plan"]
        assert all(not s["loss"] for s in segs if s["role"] in ("plan", "image", "prompt"))
        # the sampled plan is the model's (scripted) text, earlier rounds its own earlier plans
        kind, script = script_plans(rec["prompt"])
        assert [p["text"] for p in plans] == script[:len(plans)]
        assert sum(s["type"] == "image" for s in segs) == len(plans) - 1
        verdict, _, _ = judge.judge_plan(rec["prompt"], plans[-1]["text"])
        assert rec["label"] == ("positive" if verdict.ok else "negative")
        assert rec["errors"] == sorted({e.kind for e in verdict.errors})
        targets = [s for s in segs if s["loss"]]
        crit = parse_critique(targets[0]["text"])
        assert targets[0]["role"] == "critique" and crit.ok == verdict.ok
        if rec["label"] == "negative":
            assert kind == "contradicting" and targets[1]["role"] == "refine" and len(targets) == 2
            parse_refine(targets[1]["text"])
        else:
            assert len(targets) == 1


def test_positive_share_and_manifest_statistics(built):
    out, man, _ = built
    sub = man["subsets"]["conflict"]
    ss = sub["self_sampled"]
    want = sum(is_positive(i, CFG.conflict_positive) for i in range(10))
    assert sub["positive"] == want == 4 and sub["negative"] == 10 - want
    assert ss["off_ratio"] == 0 and ss["unfilled"] == 0
    assert ss["parse_failures"] > 0 and ss["natural_negative"] > 0 and ss["natural_positive"] > 0
    judged = ss["natural_positive"] + ss["natural_negative"]
    assert ss["plans"] == judged + ss["parse_failures"]
    assert ss["natural_positive_share"] == round(ss["natural_positive"] / judged, 4)
    assert sum(ss["end_reasons"].values()) == ss["trajectories"] >= 10


def test_same_seed_is_byte_identical_and_resumes(built, tmp_path, export):
    out, man, _ = built
    again = tmp_path / "again"
    build_dataset(again, "conflict", CFG, progress=False, checkpoint=export, workers=2)
    assert _digest(again) == _digest(out)
    (again / "manifest.json").unlink()
    (again / "conflict/shard-00001.jsonl").unlink()
    build_dataset(again, "conflict", CFG, progress=False, checkpoint=export)
    assert _digest(again) == _digest(out)
    s1 = tmp_path / "s1"
    other = build_dataset(s1, "conflict", replace(CFG, seed=1), progress=False, checkpoint=export)
    assert [r["prompt"] for r in _records(s1, other)] != [r["prompt"] for r in _records(out, man)]


def test_heldout_prompts_never_appear(built):
    out, man, calls = built
    frac = CFG.heldout_fraction
    assert not any(is_heldout(parse_prompt(p), frac) for prompts, _ in calls for p in prompts)
    assert not any(is_heldout(parse_prompt(r["prompt"]), frac) for r in _records(out, man))
    drawn = [S.draw_prompt(CFG, i, a)[1] for i in range(100) for a in range(2)]
    assert not any(is_heldout(s, frac) for s in drawn) and len(set(drawn)) > 50


def test_cli_builds_self_sampled_conflict(tmp_path, export, scripted, capsys):
    spec = importlib.util.spec_from_file_location("build_cli", ROOT / "data" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "cli"
    rc = mod.main(["conflict", "--checkpoint", str(export), "--out", str(out), "--preset", "tiny",
                   "--samples", "3", "--quiet"])
    assert rc == 0 and "self-sampled:" in capsys.readouterr().out
    assert validate(out) == []


def test_share_out_of_reach_keeps_the_other_label_or_drops(tmp_path, export, scripted):
    """All negatives wanted, one attempt each: consistent trajectories keep a positive (off_ratio),
    unparseable ones leave the sample out (unfilled); the manifest says so."""
    cfg = replace(CFG, conflict=8, shard_size=8, conflict_positive=0.0, self_attempts=1)
    man = build_dataset(tmp_path, "conflict", cfg, progress=False, checkpoint=export)
    sub = man["subsets"]["conflict"]
    ss = sub["self_sampled"]
    assert ss["off_ratio"] == sub["positive"] > 0 and ss["unfilled"] > 0
    assert sub["samples"] == 8 - ss["unfilled"] == sub["positive"] + sub["negative"]
    assert validate(tmp_path) == []


def test_untrained_checkpoint_is_a_clear_error(tmp_path, export):
    """Unscripted, a random model's words do not parse: every plan is counted and nothing is kept."""
    torch.set_num_threads(1)
    cfg = replace(CFG, conflict=2, shard_size=2, self_attempts=1, self_rounds=1, self_temperature=0.0)
    with pytest.raises(RuntimeError, match="no usable plan"):
        build_dataset(tmp_path, "conflict", cfg, progress=False, checkpoint=export)
    assert not (tmp_path / "manifest.json").exists()
    assert not list((tmp_path / "conflict").glob("images/*"))        # sampled before anything is written


def test_normalise_plan():
    assert S.normalise_plan("<ins> draw a circle </ins> <des> a circle </des>") == \
        "<ins>draw a circle</ins><des>a circle</des>"
    assert S.normalise_plan("<ins> draw a circle </ins> <des>") is None          # cut off
    assert S.normalise_plan("<ins></ins><des>a circle</des>") is None
