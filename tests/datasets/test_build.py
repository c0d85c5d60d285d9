"""Building, determinism, resume/restart, manifest statistics and validate on planted corruptions."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from procpaint.datasets import DataConfig, build_dataset, preset, validate
from procpaint.sequence.tokenizer import TextTokenizer
from procpaint.world import parse_critique, parse_plan, parse_prompt, parse_refine

CFG = preset("tiny", multiturn=16, conflict=12, alignment=12, shard_size=8)
ROOT = Path(__file__).resolve().parents[2]


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    man = build_dataset(out, "all", CFG, workers=1, progress=False)
    return out, man


def test_manifest_statistics_match_config(built):
    out, man = built
    subs = man["subsets"]
    assert subs["multiturn"]["samples"] == 16 and subs["conflict"]["samples"] == 12
    assert subs["conflict"]["positive"] == round(12 * CFG.conflict_positive)
    assert subs["alignment"]["positive"] == 4 and subs["alignment"]["negative"] == 8
    assert 1 <= subs["multiturn"]["images_per_sample"]["max"] <= CFG.max_images
    assert sum(subs["multiturn"]["tags"].values()) == 16 and "add" in subs["multiturn"]["ops"]
    assert (out / "tokenizer.json").exists() and man["world"]["image_size"] == 32


def test_records_parse_and_loss_flags(built):
    out, man = built
    tok = TextTokenizer(out / "tokenizer.json")
    for sub, info in man["subsets"].items():
        for shard in info["shards"]:
            for line in (out / shard).read_text().splitlines():
                rec = json.loads(line)
                for s in rec["segments"]:
                    if s["type"] != "text":
                        continue
                    tok.encode(s["text"])
                    {"prompt": parse_prompt, "plan": parse_plan, "critique": parse_critique,
                     "refine": parse_refine}[s["role"]](s["text"])
                targets = [s for s in rec["segments"] if s["loss"]]
                if sub == "multiturn":
                    first = rec["segments"][0]
                    assert rec["eos"] and not first["loss"] and first["role"] == "prompt"
                else:   # conflict / alignment: only the critique (+ refine) is trained
                    assert {s["role"] for s in targets} <= {"critique", "refine"}
                    assert ("refine" in {s["role"] for s in targets}) == (rec["label"] == "negative")


def test_same_seed_is_byte_identical_for_any_worker_count(built, tmp_path):
    out, _ = built
    build_dataset(tmp_path, "all", CFG, workers=2, progress=False)
    assert _digest(tmp_path) == _digest(out)


def test_resume_and_restart(tmp_path):
    cfg = preset("tiny", multiturn=12, conflict=0, alignment=0, shard_size=4)
    build_dataset(tmp_path, "multiturn", cfg, progress=False)
    ref = _digest(tmp_path)
    # Interrupted build: manifest and one shard gone -> resume rebuilds just that.
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "multiturn/shard-00001.jsonl").unlink()
    build_dataset(tmp_path, "multiturn", cfg, progress=False)
    assert _digest(tmp_path) == ref
    # Different settings -> clean restart, no stale shards.
    man = build_dataset(tmp_path, "multiturn", replace(cfg, seed=5, multiturn=4), progress=False)
    assert man["subsets"]["multiturn"]["samples"] == 4
    assert sorted(p.name for p in (tmp_path / "multiturn").glob("shard-*.jsonl")) == ["shard-00000.jsonl"]


def test_interrupted_shard_images_are_replaced_whole(tmp_path):
    """A shard's images are written to a temporary folder renamed at the end: leftovers of a killed
    build (temporary folder, or the folder of a shard whose JSONL is missing) never survive."""
    cfg = preset("tiny", multiturn=8, conflict=0, alignment=0, shard_size=4)
    build_dataset(tmp_path, "multiturn", cfg, progress=False)
    ref = _digest(tmp_path)
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "multiturn/shard-00001.jsonl").unlink()
    stale = tmp_path / "multiturn/images/.00001.tmp999"
    stale.mkdir()
    (stale / "0000004-0.png").write_bytes(b"torn")
    (tmp_path / "multiturn/images/00001/junk.png").write_bytes(b"junk")
    build_dataset(tmp_path, "multiturn", cfg, progress=False)
    assert _digest(tmp_path) == ref and not stale.exists()
    assert validate(tmp_path) == []


def test_validate_catches_planted_corruptions(built, tmp_path):
    out, man = built
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    shard = bad / man["subsets"]["alignment"]["shards"][0]
    lines = shard.read_text().splitlines()
    r0 = json.loads(lines[0])
    r0["segments"][0]["text"] = r0["segments"][0]["text"].replace("</des>", "")         # broken tag
    r1 = json.loads(lines[1])
    r1["segments"][1]["height"] = 99                                                     # wrong size
    r2 = json.loads(lines[2])
    r2["label"] = "maybe"                                                                # bad label
    r3 = json.loads(lines[3])
    (bad / r3["segments"][1]["path"]).unlink()                                           # missing image
    r4 = json.loads(lines[4])
    r4["segments"][-1]["text"] = "the image is zorgly."                                  # unknown word
    lines[:6] = [json.dumps(r) for r in (r0, r1, r2, r3, r4)] + ["{not json"]
    shard.write_text("\n".join(lines) + "\n")
    problems = validate(bad)
    joined = "\n".join(problems)
    for ln, field in [(1, "segments[0].text"), (2, "segments[1].path"), (3, "label"), (4, "segments[1].path"),
                      (5, "text"), (6, "record")]:
        assert f"{shard}:{ln}: " in joined and field in joined, (ln, field, joined)
    assert validate(out) == []
    cli = [sys.executable, str(ROOT / "data/build.py"), "validate", str(bad)]
    res = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 1 and f"{shard}:3: label:" in res.stdout


def test_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="checkpoint not found"):
        build_dataset(tmp_path, "conflict", CFG, checkpoint=tmp_path / "x.ckpt", progress=False)
    with pytest.raises(ValueError, match="needs a multi-turn checkpoint"):
        build_dataset(tmp_path, "conflict", replace(CFG, conflict_source="self"), progress=False)
    with pytest.raises(ValueError, match="conflict_positive"):
        DataConfig(conflict_positive=1.5)


def test_built_tokenizer_reads_the_benchmarks(built):
    """Checkpoints trained on a built dataset can run both evaluation benchmarks."""
    from procpaint.evaluation import geneval, knowledge

    out, _ = built
    tok = TextTokenizer(out / "tokenizer.json")
    for m in knowledge.generate_metadata(200, seed=1) + geneval.generate_metadata(
            {t: 20 for t in geneval.GENEVAL_TAGS}, seed=1):
        tok.encode(m["prompt"])
