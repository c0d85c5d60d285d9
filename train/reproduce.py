"""Reproduce the paper's comparison in the painting world: train every row, evaluate, one table.

    python train/reproduce.py [--out runs/reproduce] [--rows process single_pass ...] [--smoke]
                              [--dry-run] [--eval-only] [--limit N] [--images-per-prompt K]
                              [key=value ...]          # overrides passed to every fit.py run

The two-stage recipe the paper implies, as the commands this script runs (``--dry-run`` prints them):

    # 1. stage 1: multi-turn trajectories only
    python train/fit.py --config train/configs/stage1_multiturn.yaml trainer.default_root_dir=OUT/runs \\
        data.cache_dir=OUT/data/stage1_multiturn
    # 2. every row at equal compute (train/configs/ablation_base.yaml); the self-sampled critique row
    #    builds its conflict subset by sampling plans from the stage-1 checkpoint
    python train/fit.py --config train/configs/ROW.yaml trainer.default_root_dir=OUT/runs \\
        data.cache_dir=OUT/data/ROW [data.conflict_ckpt=OUT/ckpt/stage1_multiturn.ckpt]
    # 3. evaluate each row in its inference mode (single-pass for the baseline, process otherwise,
    #    plus the process model in planner mode (planner-only row, inference cost) and with the oracle
    #    inspector); every mode that writes plans also writes its process diagnostics
    python train/evaluate.py --ckpt ROW=OUT/ckpt/ROW.ckpt --mode MODE --out OUT/eval [--diagnostics]
    # 4. one combined table
    python train/evaluate.py --tables OUT/eval           # -> OUT/eval/summary.md, summary.json

Every step is skipped when its output exists (a checkpoint copied to OUT/ckpt/ROW.ckpt, images in
OUT/eval), so the script resumes. ``--smoke`` shrinks everything to the debug preset (CI seconds).
A failing row is reported and the others still run; the exit status is 1 if any row failed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "train" / "configs"
# row -> evaluation modes (the first is the row's own; planner adds the cost comparison and the
# paper's planner-only row; oracle: the exact judge as the inspector, the "+ GPT inspector" row)
ROWS = {
    "single_pass": ("single-pass",),
    "process": ("process", "planner", "oracle"),
    "process_no_aug": ("process",),
    "process_no_selfcritique": ("process",),
    "critique_scene_graph": ("process",),
    "critique_self_sampled": ("process",),
    "only_conflict": ("process",),
    "only_alignment": ("process",),
    "both": ("process",),
}
STAGE1 = "stage1_multiturn"
SMOKE = ["model.preset=debug", "data.image_size=32", "model.patch_size=4", "data.build_samples=60",
         "data.max_tokens=512", "data.val_samples=8",
         "optim.warmup_steps=2", "trainer.max_steps=6", "trainer.val_check_interval=3",
         "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
         "logging.checkpoint_every_n_steps=3",
         # the debug preset's sampling and closing eval (default.yaml's 48 prompts x 20 flow steps
         # per row took most of a smoke run)
         "sampling.num_steps=3", "logging.final_eval_prompts=2"]


def last_checkpoint(runs: Path, name: str) -> Path | None:
    """Newest ``<runs>/<name>/version_*/checkpoints/last.ckpt`` (fit.py's layout), or None."""
    found = sorted((runs / name).glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


class Runner:
    def __init__(self, dry_run: bool):
        self.dry_run, self.failed = dry_run, []

    def run(self, cmd: list[str], what: str) -> bool:
        print("$ " + " ".join(cmd), flush=True)
        if self.dry_run:
            return True
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        if rc:
            print(f"error: {what} failed with exit status {rc}", file=sys.stderr)
            self.failed.append(what)
        return rc == 0


def train(r: Runner, out: Path, row: str, overrides: list[str]) -> Path | None:
    """Train one row unless OUT/ckpt/ROW.ckpt exists; returns that checkpoint (None on failure)."""
    dest = out / "ckpt" / f"{row}.ckpt"
    if dest.is_file():
        print(f"# {row}: {dest} exists, not retrained")
        return dest
    cmd = [sys.executable, "train/fit.py", "--config", str(CONFIGS / f"{row}.yaml"),
           f"trainer.default_root_dir={out / 'runs'}", f"data.cache_dir={out / 'data' / row}", *overrides]
    if not r.run(cmd, f"training {row}"):
        return None
    if r.dry_run:
        return dest
    ckpt = last_checkpoint(out / "runs", row)
    if ckpt is None:
        r.failed.append(f"training {row} (no last.ckpt under {out / 'runs' / row})")
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ckpt, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    ap.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    ap.add_argument("--smoke", action="store_true", help="debug preset everywhere (seconds per row)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    ap.add_argument("--eval-only", action="store_true", help="evaluate existing OUT/ckpt/*.ckpt only")
    ap.add_argument("--limit", type=int, help="evaluate the first N prompts of each benchmark")
    ap.add_argument("--images-per-prompt", type=int, default=4)
    ap.add_argument("--benchmark", default="all", choices=["geneval", "knowledge", "all"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every fit.py run")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    overrides = [*(SMOKE if args.smoke else []), *args.overrides]
    limit = args.limit if args.limit is not None else (6 if args.smoke else None)
    ipp = 1 if args.smoke and args.images_per_prompt == 4 else args.images_per_prompt
    r = Runner(args.dry_run)

    ckpts: dict[str, Path] = {}
    if args.eval_only:
        ckpts = {row: out / "ckpt" / f"{row}.ckpt" for row in args.rows
                 if (out / "ckpt" / f"{row}.ckpt").is_file()}
    else:
        stage1 = None
        if "critique_self_sampled" in args.rows:
            stage1 = train(r, out, STAGE1, overrides)
        for row in args.rows:
            extra = []
            if row == "critique_self_sampled":
                if stage1 is None:
                    r.failed.append(f"{row} (stage 1 failed)")
                    continue
                extra = [f"data.conflict_ckpt={stage1}"]
            ckpt = train(r, out, row, [*overrides, *extra])
            if ckpt is not None:
                ckpts[row] = ckpt
    for row, ckpt in ckpts.items():
        for mode in ROWS[row]:
            cmd = [sys.executable, "train/evaluate.py", "--ckpt", f"{row}={ckpt}", "--mode", mode,
                   "--benchmark", args.benchmark, "--out", str(out / "eval"),
                   "--images-per-prompt", str(ipp), "--device", args.device, "--quiet",
                   *(["--diagnostics"] if mode != "single-pass" else [])]
            r.run(cmd + (["--limit", str(limit)] if limit else []), f"evaluating {row} ({mode})")
    if ckpts:
        r.run([sys.executable, "train/evaluate.py", "--tables", str(out / "eval")], "tables")
    if r.failed:
        print("failed: " + "; ".join(r.failed), file=sys.stderr)
        return 1
    print(f"combined table: {out / 'eval' / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
