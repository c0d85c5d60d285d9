"""Process diagnostics from trajectories whose every stage the test controls: a wrong draft then a right
refined image, a critique that lies, an unreadable critique, a plan that contradicts the prompt; exact
confusion counts, refine success and accuracy by round. And: without the flag, evaluation writes what
it always wrote."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from procpaint.evaluation import diagnostics, geneval, layout, runner
from procpaint.inference.types import GenerationConfig, Stage, TrajectoryResult
from procpaint.world.critiques import Critique, Error, critique_text
from procpaint.world.language import Add, plan_text, refine_text
from procpaint.world.render import to_tensor_range
from procpaint.world.scene import BACKGROUND, SHAPES, Obj, Spec

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("evaluate_cli", ROOT / "train" / "evaluate.py")
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)



def _distinct(n_per_tag: int = 2) -> list[dict]:
    """Tags in order, ``n_per_tag`` each, no prompt twice (the scripted generator knows a trajectory
    by its prompt)."""
    out, seen = [], set()
    for m in geneval.generate_metadata({t: 6 for t in geneval.GENEVAL_TAGS}, seed=9):
        if m["prompt"] not in seen and sum(o["tag"] == m["tag"] for o in out) < n_per_tag:
            out.append(m)
            seen.add(m["prompt"])
    return out


META = _distinct()


def _img(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(to_tensor_range(a))


def _plan(spec: Spec) -> str:
    return plan_text((Add(spec.objects),), spec)


def _contradicting(spec: Spec) -> Spec:
    o = spec.objects[0]
    other = next(s for s in SHAPES if s not in {p.shape for p in spec.objects})
    return Spec((Obj(other, o.color, o.size), *spec.objects[1:]), spec.relations)


FINE = critique_text(Critique("image", True, (), (Obj("circle"),)))           # what a critique says
WRONG = critique_text(Critique("image", False, (Error("missing", Obj("circle")),)))
REFINE = refine_text((Add((Obj("circle"),)),))


class ScriptedGenerator:
    """Process trajectories by prompt index i (metadata order), i % 4:

    A  plan, blank draft, critique "wrong" (true), refine, right refined image        -> right, fixed
    B  contradicting plan, blank draft, critique "fine" (a lie), end                  -> wrong
    C  plan, right draft, critique "fine" (true), end                                 -> right
    D  plan, blank draft, unreadable critique; plan, right draft, critique "fine"     -> right in round 2

    Single-pass: the one right image. Right images are the oracle's render of the prompt's scene.
    """

    def __init__(self, oracle, metadata=META):
        self.oracle, self.index = oracle, {m["prompt"]: (i, m) for i, m in enumerate(metadata)}
        assert len(self.index) == len(metadata)

    def right(self, i: int, meta: dict) -> torch.Tensor:
        return _img(self.oracle(meta, 7 * i))

    def generate(self, prompts, config):
        out = []
        for p in prompts:
            i, meta = self.index[p]
            spec = geneval.spec_from_json(meta["spec"])
            blank = _img(np.full((32, 32, 3), BACKGROUND, np.uint8))
            if config.mode == "single-pass":
                stages = [Stage("image", image=self.right(i, meta))]
            elif i % 4 == 0:
                stages = [Stage("plan", _plan(spec)), Stage("draft", image=blank), Stage("critique", WRONG),
                          Stage("refine", REFINE), Stage("refined", image=self.right(i, meta))]
            elif i % 4 == 1:
                stages = [Stage("plan", _plan(_contradicting(spec))), Stage("draft", image=blank),
                          Stage("critique", FINE)]
            elif i % 4 == 2:
                stages = [Stage("plan", _plan(spec)), Stage("draft", image=self.right(i, meta)),
                          Stage("critique", FINE)]
            else:
                stages = [Stage("plan", _plan(spec)), Stage("draft", image=blank),
                          Stage("critique", "the image is lovely"),
                          Stage("plan", _plan(spec)), Stage("draft", image=self.right(i, meta)),
                          Stage("critique", FINE)]
            out.append(TrajectoryResult(p, config.mode, stages, "eos", forward_passes=len(stages)))
        return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory, oracle):
    gen = ScriptedGenerator(oracle)
    for i, m in enumerate(META):               # the premise: the detector reads every right image right
        assert runner.score_image("geneval", oracle(m, 7 * i), m, runner.Detector())[0], m["prompt"]
    out = tmp_path_factory.mktemp("diag") / "process"
    runner.generate_dir(gen, META, out, GenerationConfig(mode="process"), images_per_prompt=1, batch_size=5,
                        show_progress=False, keep_stages=True)
    runner.score_dir(out, META, show_progress=False)
    return out


def test_stage_images_and_their_paths_are_kept(folder):
    rec = layout.read_costs(folder, 3)[0]                       # D: two rounds
    assert [s["kind"] for s in rec["stages"]] == ["plan", "draft", "critique", "plan", "draft", "critique"]
    assert [s["image"] for s in rec["stages"]] == [None, "stages/0000_01_draft.png", None, None,
                                                   "stages/0000_04_draft.png", None]
    kept = layout.read_image(folder / "00003" / "stages" / "0000_04_draft.png")
    assert np.array_equal(kept, layout.read_image(layout.sample_path(folder, 3, 0)))  # the final image
    assert sorted(p.name for p in (folder / "00000" / "stages").iterdir()) == [
        "0000_01_draft.png", "0000_04_refined.png"]


def test_exact_counts(folder):
    d = diagnostics.diagnose(folder, show_progress=False)
    assert d["trajectories"] == 12 and d["without_stages"] == 0
    m = d["metrics"]
    # tags hold (A, B) or (C, D) in turn: single, counting, position are A/B; the others C/D
    ab, cd = ("single_object", "counting", "position"), ("two_object", "colors", "color_attr")
    for metric in ("plan_consistent", "plan_complete", "final_plan_complete"):
        assert [m[metric][t] for t in ab] == [0.5] * 3 and [m[metric][t] for t in cd] == [1.0] * 3
        assert m[metric]["overall"] == 0.75
    assert [m["draft_vs_plan"][t] for t in (*ab, *cd)] == [0.0] * 3 + [0.5] * 3      # only C's draft
    assert m["draft_vs_prompt"]["overall"] == 0.25
    # the critique confusion matrix: A says wrong (true), B says fine (a lie), C fine (true),
    # D round 1 unreadable (its draft is wrong), D round 2 fine (true)
    assert d["critique_confusion"]["overall"] == {
        "is_fine": {"says_fine": 6, "says_wrong": 0, "says_unreadable": 0},
        "is_wrong": {"says_fine": 3, "says_wrong": 3, "says_unreadable": 3}}
    assert d["critique_confusion"]["single_object"] == {
        "is_fine": {"says_fine": 0, "says_wrong": 0, "says_unreadable": 0},
        "is_wrong": {"says_fine": 1, "says_wrong": 1, "says_unreadable": 0}}
    assert sum(m["critique"]["images"].values()) == 15
    assert [m["critique"][t] for t in ab] == [0.5] * 3 and [m["critique"][t] for t in cd] == [2 / 3] * 3
    # refine: wrong drafts A, B, D-round-1; only A's is refined, and fixed
    assert d["refine_counts"]["overall"] == {"wrong_drafts": 9, "refined": 3, "fixed": 3,
                                             "fine_drafts_refined": 0, "broken": 0}
    assert [m["refine_success"][t] for t in (*ab, *cd)] == [0.5] * 3 + [0.0] * 3
    assert m["refine_success"]["overall"] == 0.25                 # GenEval's rule: the mean over tags
    # after round 1: A (refined) and C right; after round 2 D too (A, B, C keep their last image)
    assert [r["overall"] for r in d["rounds"]] == [0.5, 0.75]
    assert [d["rounds"][1][t] for t in cd] == [1.0] * 3
    # the last round is the folder's score
    results = [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines()]
    assert runner.summarize("geneval", results)["overall"] == d["rounds"][-1]["overall"]
    for s in d["rounds"]:
        assert s["ci95"]["overall"][0] <= s["overall"] <= s["ci95"]["overall"][1]
    assert d["plans_unreadable"]["overall"] == 0


def test_reports_and_forked_workers(folder):
    d = diagnostics.diagnose(folder, show_progress=False)
    assert diagnostics.diagnose(folder, show_progress=False, workers=2) == d
    paths = diagnostics.write(folder, d)
    assert [p.name for p in paths] == list(diagnostics.FILES)
    md = (folder / "diagnostics.md").read_text()
    assert "| Critique accuracy | 0.50 | 0.67 | 0.50 | 0.67 | 0.50 | 0.67 | 0.58 |" in md
    assert "| overall | 6 | 0 | 0 | 3 | 3 | 3 |" in md and "![accuracy by round](accuracy_by_round.png)" in md
    from PIL import Image

    with Image.open(folder / "accuracy_by_round.png") as im:
        assert im.size == (640, 400)


def test_parsers_of_the_process():
    assert diagnostics.critique_says(FINE) == "fine" and diagnostics.critique_says(WRONG) == "wrong"
    assert diagnostics.critique_says("the plan is consistent with the prompt and complete.") == "unreadable"
    assert diagnostics.critique_says(None) == "unreadable"
    kinds = ["image", "plan", "draft", "critique", "refine", "refined", "plan", "draft"]
    rounds = diagnostics.split_rounds([{"kind": k} for k in kinds])
    assert [[j for j, _ in r] for r in rounds] == [[0], [1, 2, 3, 4, 5], [6, 7]]
    assert diagnostics.plan_scene("<ins>draw</ins><des>x</des>") is None


def test_evaluate_default_output_is_unchanged_and_diagnostics_opt_in(tmp_path, oracle, monkeypatch):
    monkeypatch.setattr(cli, "metadata_for", lambda b, **_: META)
    gen = ScriptedGenerator(oracle)
    kw = dict(benchmarks=("geneval",), modes=("process", "single-pass"), images_per_prompt=1, limit=4,
              show_progress=False)
    cli.evaluate([("m", gen)], tmp_path / "plain", **kw)
    cli.evaluate([("m", gen)], tmp_path / "diag", diagnostics=True, **kw)
    plain, diag = (tmp_path / run / "m" / "process" / "geneval" for run in ("plain", "diag"))
    files = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())  # noqa: E731
    assert not any("stages" in f or f.startswith("diagnostics") or f.endswith("by_round.png")
                   for f in files(tmp_path / "plain"))
    # --limit 4 takes one prompt of the first four tags: META 0, 2, 4, 6 (scripts A, C, A, C)
    assert set(files(diag)) - set(files(plain)) == {*diagnostics.FILES, "00000/stages/0000_01_draft.png",
                                                    "00000/stages/0000_04_refined.png",
                                                    "00001/stages/0000_01_draft.png",
                                                    "00002/stages/0000_01_draft.png",
                                                    "00002/stages/0000_04_refined.png",
                                                    "00003/stages/0000_01_draft.png"}
    for i in range(4):                          # the same images; records differ only by the stage paths
        assert layout.sample_path(plain, i, 0).read_bytes() == layout.sample_path(diag, i, 0).read_bytes()
        a, b = layout.read_costs(plain, i)[0], layout.read_costs(diag, i)[0]
        assert all(set(s) == {"kind", "text"} for s in a["stages"])
        assert {**b, "stages": [{k: v for k, v in s.items() if k != "image"} for s in b["stages"]]} == a
    single = tmp_path / "diag" / "m" / "single-pass" / "geneval"
    assert not (single / "00000" / "stages").exists() and not (single / "diagnostics.json").exists()
    assert "Process diagnostics" not in (tmp_path / "plain" / "summary.md").read_text()
    md = (tmp_path / "diag" / "summary.md").read_text()
    assert "## Process diagnostics" in md and "| m | process | geneval |" in md
    # --score --diagnostics: a folder with stages gets them; one without is a clear error
    (diag / "diagnostics.json").unlink()
    assert cli.main(["--score", str(diag), "--metadata", str(diag / "evaluation_metadata.jsonl"),
                     "--diagnostics", "--quiet", "--workers", "1"]) == 0
    assert (diag / "diagnostics.json").is_file()
    assert "## Process diagnostics" in (diag / "summary.md").read_text()
    assert cli.main(["--score", str(plain), "--metadata", str(plain / "evaluation_metadata.jsonl"),
                     "--diagnostics", "--quiet", "--workers", "1"]) == 2
