"""Building, determinism, resume/restart, manifest statistics and validate on planted corruptions."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from procpaint.datasets import BuildConfig, build_dataset, preset, validate
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
    flawed_drafts = 0
    for sub, info in man["subsets"].items():
        for shard in info["shards"]:
            for line in (out / shard).read_text().splitlines():
                rec = json.loads(line)
                for s in rec["segments"]:
                    if s["type"] != "text":
                        continue
                    tok.encode(s["text"])
                    if s["role"] == "fact" or (s["role"] == "prompt" and rec["tag"] == "knowledge"):
                        continue          # fact words (tests/datasets/test_knowledge_data.py)
                    {"prompt": parse_prompt, "plan": parse_plan, "critique": parse_critique,
                     "refine": parse_refine}[s["role"]](s["text"])
                targets = [s for s in rec["segments"] if s["loss"]]
                if rec["kind"] == "fact":
                    assert [(s["role"], s["loss"]) for s in rec["segments"]] == [("fact", True)]
                elif sub == "multiturn":
                    first = rec["segments"][0]
                    assert rec["eos"] and not first["loss"] and first["role"] == "prompt"
                    # Only consistent images are generation targets: a draft that a refine corrects
                    # (image, critique, refine) is context; every other image is trained.
                    segs = rec["segments"]
                    for k, s in enumerate(segs):
                        if s["type"] == "image":
                            flawed = k + 2 < len(segs) and segs[k + 2]["role"] == "refine"
                            assert s["loss"] == (not flawed), (shard, rec["id"], k)
                            flawed_drafts += flawed
                else:   # conflict / alignment: only the critique (+ refine) is trained
                    assert {s["role"] for s in targets} <= {"critique", "refine"}
                    assert ("refine" in {s["role"] for s in targets}) == (rec["label"] == "negative")
    assert flawed_drafts > 0                                    # the build has refined rounds to check


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
    # Different settings over finished shards: refused, the dataset untouched ...
    with pytest.raises(ValueError, match=r"other settings \(multiturn 12 -> 4, seed 0 -> 5\).*--overwrite"):
        build_dataset(tmp_path, "multiturn", replace(cfg, seed=5, multiturn=4), progress=False)
    assert _digest(tmp_path) == ref
    # ... and with overwrite a clean restart, no stale shards.
    man = build_dataset(tmp_path, "multiturn", replace(cfg, seed=5, multiturn=4), progress=False, overwrite=True)
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
        BuildConfig(conflict_positive=1.5)


def test_built_tokenizer_reads_the_benchmarks(built):
    """Checkpoints trained on a built dataset can run both evaluation benchmarks."""
    from procpaint.evaluation import geneval, knowledge

    out, _ = built
    tok = TextTokenizer(out / "tokenizer.json")
    for m in knowledge.generate_metadata(200, seed=1) + geneval.generate_metadata(
            {t: 20 for t in geneval.GENEVAL_TAGS}, seed=1):
        tok.encode(m["prompt"])


def _build_cli(*args, **kw):
    return subprocess.run([sys.executable, str(ROOT / "data/build.py"), *args, "--quiet"], capture_output=True,
                          text=True, cwd=ROOT, timeout=300, **kw)


def test_changed_samples_never_deletes_a_finished_dataset(tmp_path):
    out = tmp_path / "D"
    assert _build_cli("all", "--out", str(out), "--preset", "tiny", "--samples", "6").returncode == 0
    ref = _digest(out)
    res = _build_cli("all", "--out", str(out), "--preset", "tiny", "--samples", "5")
    assert res.returncode == 2 and "--overwrite" in res.stderr and "Traceback" not in res.stderr
    assert _digest(out) == ref and validate(out) == []
    res = _build_cli("all", "--out", str(out), "--preset", "tiny", "--samples", "5", "--overwrite")
    assert res.returncode == 0 and validate(out) == []


def test_second_build_into_one_out_is_refused_naming_the_holder(tmp_path):
    from procpaint.datasets.store import BuildLockedError

    cfg = preset("tiny", multiturn=4, conflict=0, alignment=0, shard_size=4)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".build.lock").write_text(f"{holder.pid}\n")
        with pytest.raises(BuildLockedError, match=f"pid {holder.pid}"):
            build_dataset(tmp_path, "multiturn", cfg, progress=False)
        assert not (tmp_path / "multiturn").exists()
        res = _build_cli("multiturn", "--out", str(tmp_path), "--preset", "tiny", "--samples", "4")
        assert res.returncode == 2 and f"pid {holder.pid}" in res.stderr and "Traceback" not in res.stderr
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock is stale and the next build takes it over (and releases it).
    build_dataset(tmp_path, "multiturn", cfg, progress=False)
    assert validate(tmp_path) == [] and not (tmp_path / ".build.lock").exists()


def _children(pid: int) -> set[int]:
    kids = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids |= {int(x) for x in (task / "children").read_text().split()}
        except OSError:
            pass
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_pool_workers_die_with_a_killed_build(tmp_path):
    import signal
    import time

    proc = subprocess.Popen([sys.executable, str(ROOT / "data/build.py"), "multiturn", "--out", str(tmp_path),
                             "--preset", "tiny", "--samples", "4000", "--workers", "2", "--quiet"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        workers: set[int] = set()
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            workers = _children(proc.pid)
        assert len(workers) >= 2, "the build never started its pool"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    shards = sorted((tmp_path / "multiturn").glob("shard-*.jsonl"))
    deadline = time.monotonic() + 60
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = [w for w in workers if _alive(w)]
    for w in orphans:
        os.kill(w, signal.SIGKILL)
    assert not orphans, f"pool workers {orphans} outlived their killed parent"
    # Orphans would have kept taking queued shards: nothing is written after the parent died.
    assert sorted((tmp_path / "multiturn").glob("shard-*.jsonl")) == shards


def test_validate_on_a_missing_directory_says_so(tmp_path):
    assert validate(tmp_path / "nope") == [f"{tmp_path / 'nope'}:0: directory: does not exist"]
    res = subprocess.run([sys.executable, str(ROOT / "data/build.py"), "validate", str(tmp_path / "nope")],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 1 and "does not exist" in res.stdout and "build did not finish" not in res.stdout
