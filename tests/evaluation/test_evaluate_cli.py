"""train/evaluate.py: --score end to end, the generation path with a fake generator (resume,
tables, cost), and clear errors for bad paths."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from procpaint.evaluation import geneval, knowledge, layout
from procpaint.inference.types import Stage, TrajectoryResult
from procpaint.world.render import to_tensor_range

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("evaluate_cli", ROOT / "train" / "evaluate.py")
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)


def _tiny_geneval(n_per_tag=2):
    return geneval.generate_metadata({t: n_per_tag for t in geneval.GENEVAL_TAGS}, seed=9)


def test_score_end_to_end(tmp_path, oracle, capsys):
    meta = _tiny_geneval()
    meta_file = tmp_path / "evaluation_metadata.jsonl"
    layout.write_jsonl(meta_file, meta)
    imgs = tmp_path / "images"
    for i, m in enumerate(meta):
        layout.write_prompt(imgs, i, m)
        for k in range(2):
            layout.write_image(layout.sample_path(imgs, i, k), oracle(m, 100 * i + k))
    assert cli.main(["--score", str(imgs), "--metadata", str(meta_file), "--quiet"]) == 0
    rows = [json.loads(x) for x in (imgs / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(meta)
    assert set(rows[0]) == {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"}
    assert json.loads(rows[0]["metadata"]) == meta[0]
    summary = json.loads((imgs / "summary.json").read_text())["rows"][0]["scores"]
    assert summary["overall"] >= 0.9
    md = (imgs / "summary.md").read_text()
    assert "| Single | Two | Counting | Colors | Position | Color Attr. | Overall |" in md
    assert "overall" in capsys.readouterr().out


def test_bad_paths_exit_2_with_message(tmp_path, capsys):
    assert cli.main(["--score", str(tmp_path / "nope"), "--metadata", str(tmp_path / "m.jsonl")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert cli.main(["--score", str(tmp_path), "--metadata", str(tmp_path / "m.jsonl")]) == 2
    assert "m.jsonl" in capsys.readouterr().err
    assert cli.main(["--score", str(tmp_path)]) == 2
    assert "--metadata" in capsys.readouterr().err
    assert cli.main(["--ckpt", str(tmp_path / "missing.ckpt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    layout.write_jsonl(tmp_path / "m.jsonl", _tiny_geneval(1))
    assert cli.main(["--score", str(tmp_path), "--metadata", str(tmp_path / "m.jsonl")]) == 2
    assert "no images" in capsys.readouterr().err


def test_ckpt_without_inference_room_is_a_clear_error(tmp_path, monkeypatch):
    ckpt = tmp_path / "a.ckpt"
    ckpt.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "procpaint.inference", None)     # import fails
    with pytest.raises(cli.UsageError, match="load_generator"):
        cli.load_generator(str(ckpt), "cpu")
    proc = subprocess.run([sys.executable, str(ROOT / "train/evaluate.py"), "--score", str(tmp_path / "x"),
                           "--metadata", str(tmp_path / "x.jsonl")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "not a directory" in proc.stderr


class FakeGenerator:
    """Draws the ground truth (process); single-pass draws nothing for odd batch positions."""

    def __init__(self, oracle, metadata):
        self.oracle, self.calls, self.seeds = oracle, 0, []
        self.by_prompt = {m["prompt"]: m for ms in metadata for m in ms}

    def generate(self, prompts, config):
        self.calls += 1
        self.seeds.append(config.seed)
        out = []
        for j, p in enumerate(prompts):
            img = torch.from_numpy(to_tensor_range(self.oracle(self.by_prompt[p], config.seed + j)))
            drew = config.mode == "process" or j % 2 == 0
            stages = [Stage("plan", text="<ins>draw</ins><des>x</des>", forward_passes=3),
                      Stage("draft", image=img if drew else None, forward_passes=10)]
            out.append(TrajectoryResult(p, config.mode, stages, "eos", forward_passes=13, seconds=0.01))
        return out


def test_knowledge_split_is_labelled_and_kept_apart(tmp_path, oracle, monkeypatch, capsys):
    metas = {s: knowledge.generate_metadata(12, seed=4, split=s) for s in ("heldout", "trained")}
    monkeypatch.setattr(cli, "metadata_for", lambda b, knowledge_split="heldout": metas[knowledge_split])
    fake = FakeGenerator(oracle, list(metas.values()))
    for split in ("heldout", "trained"):
        cli.evaluate([("tiny", fake)], tmp_path, benchmarks=("knowledge",), modes=("process",),
                     images_per_prompt=1, show_progress=False, knowledge_split=split)
    assert "(held-out facts)" in capsys.readouterr().err
    for folder, split in (("knowledge", "heldout"), ("knowledge-trained", "trained")):
        lines = layout.read_jsonl(tmp_path / "tiny" / "process" / folder / "evaluation_metadata.jsonl")
        assert {m["split"] for m in lines} == {split}
    md = (tmp_path / "summary.md").read_text()
    assert "| Model | Mode | Facts | Cultural |" in md
    assert "| tiny | process | held-out |" in md and "| tiny | process | trained |" in md


def test_generation_path_with_fake_generator_resumes(tmp_path, oracle, monkeypatch):
    gen_meta, kn_meta = _tiny_geneval(), knowledge.generate_metadata(12, seed=4)
    monkeypatch.setattr(cli, "metadata_for", lambda b, **_: gen_meta if b == "geneval" else kn_meta)
    fake = FakeGenerator(oracle, [gen_meta, kn_meta])
    rows = cli.evaluate([("tiny", fake)], tmp_path, modes=("process", "single-pass"), images_per_prompt=2,
                        batch_size=5, show_progress=False)
    folder = tmp_path / "tiny" / "process" / "geneval"
    assert (folder / "00011" / "samples" / "0001.png").is_file()
    assert (folder / "evaluation_metadata.jsonl").is_file() and (folder / "results.jsonl").is_file()
    assert {(r["run"], r["mode"], r["benchmark"]) for r in rows} == {
        ("tiny", m, b) for m in ("process", "single-pass") for b in ("geneval", "knowledge")}
    by = {(r["mode"], r["benchmark"]): r for r in rows}
    assert by["process", "geneval"]["scores"]["overall"] >= 0.9
    assert by["process", "knowledge"]["scores"]["overall"] >= 0.9
    assert by["single-pass", "geneval"]["cost"]["no_image"] > 0          # blank canvases are scored
    assert by["process", "geneval"]["cost"]["forward_passes"] == 13
    md = (tmp_path / "summary.md").read_text()
    assert "Inference cost per prompt" in md and "| tiny | single-pass | knowledge |" in md
    calls = fake.calls
    # Resume: nothing is regenerated; one deleted image is.
    (folder / "00003" / "samples" / "0001.png").unlink()
    cli.evaluate([("tiny", fake)], tmp_path, modes=("process",), benchmarks=("geneval",), images_per_prompt=2,
                 show_progress=False)
    assert fake.calls == calls + 1 and (folder / "00003" / "samples" / "0001.png").is_file()
    # Seeds differ per image index k (GenEval's 4 images per prompt are 4 different samples).
    assert len(set(fake.seeds)) > 1


def test_limit_and_tables_rebuild(tmp_path, oracle, monkeypatch, capsys):
    gen_meta = _tiny_geneval()
    monkeypatch.setattr(cli, "metadata_for", lambda b, **_: gen_meta)
    cli.evaluate([("a", FakeGenerator(oracle, [gen_meta]))], tmp_path, benchmarks=("geneval",),
                 modes=("planner",), images_per_prompt=1, limit=3, show_progress=False)
    folder = tmp_path / "a" / "planner" / "geneval"
    assert not (folder / "00003").exists()
    tags = [m["tag"] for m in layout.read_jsonl(folder / "evaluation_metadata.jsonl")]
    assert tags == list(geneval.GENEVAL_TAGS[:3])                  # --limit covers tags round-robin
    (tmp_path / "summary.md").unlink()
    assert cli.main(["--tables", str(tmp_path)]) == 0
    assert (tmp_path / "summary.md").is_file() and "| a | planner |" in capsys.readouterr().out


def test_unreadable_prompts_stop_before_any_image(tmp_path, oracle, monkeypatch):
    """A checkpoint whose tokenizer lacks benchmark words: a clear error naming them, nothing written."""
    from procpaint.sequence.tokenizer import TextTokenizer, build_word_level
    from procpaint.world import vocabulary

    gen_meta, kn_meta = _tiny_geneval(), knowledge.generate_metadata(12, seed=4)
    monkeypatch.setattr(cli, "metadata_for", lambda b, **_: gen_meta if b == "geneval" else kn_meta)
    fake = FakeGenerator(oracle, [gen_meta, kn_meta])
    fake.encode_prompt = TextTokenizer(build_word_level(vocabulary())).encode       # world words only
    missing = set(knowledge.vocabulary(kn_meta)) - set(vocabulary())
    assert missing
    with pytest.raises(cli.UsageError, match="lacks .* of the knowledge prompts") as err:
        cli.evaluate([("old", fake)], tmp_path, show_progress=False)
    assert sorted(missing)[0] in str(err.value)
    assert fake.calls == 0 and not (tmp_path / "old").exists()
    # the tokenizer a dataset build writes reads both benchmarks
    from procpaint.datasets.store import dataset_vocabulary

    fake.encode_prompt = TextTokenizer(build_word_level(dataset_vocabulary())).encode
    cli.evaluate([("new", fake)], tmp_path, modes=("process",), images_per_prompt=1, show_progress=False)
    assert fake.calls > 0


@pytest.mark.parametrize("edit, field", [
    (lambda m: m.pop("include"), "include: missing or empty"),
    (lambda m: m.update(include=[]), "include: missing or empty"),
    (lambda m: m.pop("tag"), "tag: None is not one of"),
    (lambda m: m["include"][0].update({"class": "zebra"}), "include[0].class: 'zebra'"),
    (lambda m: m["include"][0].update({"count": "2"}), "include[0].count: '2'"),
    (lambda m: m["include"][0].update({"color": 7}), "include[0].color: 7"),
    (lambda m: m["include"][0].update({"position": ["left of", 0]}), "include[0].position"),
])
def test_score_rejects_metadata_outside_genevals_schema(tmp_path, oracle, capsys, edit, field):
    """Metadata without include used to score every image correct (overall 1.0)."""
    meta = _tiny_geneval(1)
    imgs = tmp_path / "images"
    for i, m in enumerate(meta):
        layout.write_prompt(imgs, i, m)
        layout.write_image(layout.sample_path(imgs, i, 0), oracle(m, i))
    edit(meta[2])
    layout.write_jsonl(tmp_path / "m.jsonl", meta)
    assert cli.main(["--score", str(imgs), "--metadata", str(tmp_path / "m.jsonl"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"m.jsonl:3: {field}" in err and "Traceback" not in err
    assert not (imgs / "results.jsonl").exists()


def test_score_random_bytes_png_is_a_clear_error(tmp_path, oracle, capsys):
    meta = _tiny_geneval(1)
    imgs = tmp_path / "images"
    for i, m in enumerate(meta):
        layout.write_prompt(imgs, i, m)
        layout.write_image(layout.sample_path(imgs, i, 0), oracle(m, i))
    bad = layout.sample_path(imgs, 1, 0)
    bad.write_bytes(bytes(range(256)) * 4)
    layout.write_jsonl(tmp_path / "m.jsonl", meta)
    assert cli.main(["--score", str(imgs), "--metadata", str(tmp_path / "m.jsonl"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: not a readable image" in err and "Traceback" not in err


def test_forked_workers_write_what_one_worker_writes(tmp_path, oracle):
    """Batches and seeds do not depend on the number of processes: same images, same records."""
    from procpaint.evaluation import runner
    from procpaint.inference.types import GenerationConfig

    meta = _tiny_geneval()
    cfg = GenerationConfig(mode="process")
    one, two = tmp_path / "one", tmp_path / "two"
    s1 = runner.generate_dir(FakeGenerator(oracle, [meta]), meta, one, cfg, images_per_prompt=2, batch_size=3,
                             show_progress=False, workers=1)
    s2 = runner.generate_dir(FakeGenerator(oracle, [meta]), meta, two, cfg, images_per_prompt=2, batch_size=3,
                             show_progress=False, workers=2)
    assert s1 == s2 == {"generated": 2 * len(meta), "skipped": 0}
    for i in range(len(meta)):
        for k in range(2):
            a, b = layout.sample_path(one, i, k), layout.sample_path(two, i, k)
            assert a.read_bytes() == b.read_bytes()
        recs = [sorted((d / f"{i:05d}" / "trajectories.jsonl").read_text().splitlines()) for d in (one, two)]
        assert recs[0] == recs[1]
    # Scoring in forked workers: the same rows in the same order as one process.
    rows1 = runner.score_dir(one, meta, show_progress=False, workers=1)
    rows2 = runner.score_dir(one, meta, show_progress=False, workers=2, results_name="results2.jsonl")
    assert rows1 == rows2 and len(rows1) == 2 * len(meta)
    assert (one / "results.jsonl").read_text() == (one / "results2.jsonl").read_text()


class _Failing(FakeGenerator):
    def generate(self, prompts, config):
        if any(p == self.bad for p in prompts):
            raise RuntimeError("worker failed on purpose")
        return super().generate(prompts, config)


def test_a_failing_worker_raises_and_keeps_finished_samples(tmp_path, oracle):
    from procpaint.evaluation import runner
    from procpaint.inference.types import GenerationConfig

    meta = _tiny_geneval()
    gen = _Failing(oracle, [meta])
    gen.bad = meta[-1]["prompt"]
    with pytest.raises(RuntimeError, match="on purpose"):
        runner.generate_dir(gen, meta, tmp_path, GenerationConfig(mode="process"), images_per_prompt=1,
                            batch_size=2, show_progress=False, workers=2)
    assert layout.sample_path(tmp_path, 0, 0).is_file()            # an earlier batch's sample stays
    assert not layout.sample_path(tmp_path, len(meta) - 1, 0).is_file()


def test_bootstrap_intervals_cover_the_score_and_shrink_with_prompts():
    from procpaint.evaluation import runner

    def rows(n, tags=("single_object", "colors")):
        return [{"tag": t, "prompt": f"{t} {i}", "correct": i % 2 == 0} for t in tags for i in range(n)]

    small, large = runner.summarize("geneval", rows(20)), runner.summarize("geneval", rows(400))
    for s in (small, large):
        lo, hi = s["ci95"]["overall"]
        assert lo < s["overall"] == 0.5 < hi
    width = lambda s: s["ci95"]["overall"][1] - s["ci95"]["overall"][0]     # noqa: E731
    assert width(large) < width(small) / 3                          # ~1/sqrt(n): 20x the prompts
    assert runner.summarize("geneval", rows(20)) == small            # a fixed bootstrap seed
    perfect = runner.summarize("geneval", [{**r, "correct": True} for r in rows(10)])
    assert perfect["ci95"]["overall"] == [1.0, 1.0]
    # All images of a prompt are resampled together: 4 identical verdicts per prompt are one draw.
    clustered = [r for r in rows(20) for _ in range(4)]
    assert width(runner.summarize("geneval", clustered)) > width(small) / 1.5
