"""train/reproduce.py --smoke: the shared base trains, rows fine-tune from it on the `debug` preset, are
evaluated in their modes, and land in one combined table with the compute and paired-comparison
sections; a second call resumes (nothing retrained or regenerated). Rows are tiny (24 built records,
4 steps, 2 prompts per benchmark and mode): the test checks the plumbing, not the scores. Two rows cover every mode (single-pass; process, planner, oracle): every other row runs the
same code as `process` with its own config (each config's ablation keys: test_ablation_configs.py),
and each row costs a fit.py start and its evaluations, so all nine would make this the suite's
longest test by far for no new path.

The self-sampled critique row is left out: it samples plans from the stage-1 checkpoint, and a
6-step debug model writes none that parse (build_dataset then stops with a clear error, by design);
tests/datasets/test_self_sampled.py covers that path with a scripted sampler."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("reproduce_cli", ROOT / "train" / "reproduce.py")
reproduce = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = reproduce          # its dataclasses look their module up there
_spec.loader.exec_module(reproduce)

pytestmark = pytest.mark.slow
ROWS = ["single_pass", "process"]
LIMIT = 2        # prompts per benchmark and mode
# smaller than --smoke itself: fewer records to build per row, one closing-eval prompt, 4 steps
TINY = ["data.build_samples=24", "data.val_samples=2", "trainer.max_steps=4", "logging.final_eval_prompts=1"]


def _run(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train/reproduce.py", *TINY, "--smoke", "--out", str(out),
                           "--images-per-prompt", "1", "--limit", str(LIMIT), "--rows", *ROWS, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)


def test_every_row_trains_evaluates_and_tabulates(tmp_path):
    out = tmp_path / "repro"
    proc = _run(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {p.stem for p in (out / "ckpt").glob("*.ckpt")} == {"t2i_base", *ROWS}
    # every row started from the shared base and says so; equal steps for all
    for row in ROWS:
        t = json.loads((out / "eval" / row / "train_summary.json").read_text())
        assert t["finetune_from"] == str(out / "ckpt" / "t2i_base.ckpt") and t["steps"] == 4, t
    assert json.loads((out / "eval" / "t2i_base" / "train_summary.json").read_text())["finetune_from"] is None
    summary = json.loads((out / "eval" / "summary.json").read_text())
    got = {(r["run"], r["mode"], r["benchmark"]) for r in summary["rows"]}
    want = {(row, mode, bench) for row in ROWS for mode in reproduce.ROWS[row]
            for bench in ("geneval", "knowledge")}
    want |= {(row, reproduce.ROWS[row][0], "knowledge-trained") for row in ROWS}   # the main rows' gap
    assert got == want
    for r in summary["rows"]:      # every prompt generated, scored once, and its cost counted
        assert sum(r["scores"]["images"].values()) == LIMIT, r
        assert r["cost"]["forward_passes"] > 0, r
    md = (out / "eval" / "summary.md").read_text()
    assert "| single_pass | single-pass |" in md and "| process | planner |" in md
    assert "| process | oracle |" in md and "Process diagnostics" in md
    assert "## Training compute" in md and "| t2i_base | scratch |" in md and "| process | t2i_base |" in md
    assert "## Against the single-pass baseline" in md and "| process | planner | geneval | single_pass" in md
    # every mode that writes plans writes its diagnostics; single-pass has none to write
    assert (out / "eval" / "process" / "oracle" / "geneval" / "diagnostics.json").is_file()
    assert (out / "eval" / "process" / "process" / "knowledge" / "diagnostics.json").is_file()
    assert not (out / "eval" / "single_pass" / "single-pass" / "geneval" / "diagnostics.json").exists()
    # fit.py's closing quick eval samples the single-pass baseline in its own mode (it always draws)
    (qe,) = (out / "runs" / "single_pass").glob("version_*/quick_eval.json")
    assert json.loads(qe.read_text())["drew_image"] == 1.0

    # the resume path is the same for every row: two rows (three modes) show it at a third of the cost
    again = _run(out, "--rows", "single_pass", "process")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("exists, not retrained") == 3          # the base and both rows
    assert "train/fit.py" not in again.stdout
    assert "generated 0," in again.stderr and "kept 0" not in again.stderr
