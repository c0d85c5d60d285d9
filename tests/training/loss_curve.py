"""The stored loss curve of the `debug` preset (tests/training/baselines/debug_loss_curve.json).

    python tests/training/loss_curve.py          # regenerate it (after an intended numerics change)

It is the curve train/fit.py logs (train/loss, train/ce, train/mse per step) for STEPS steps of the
debug preset on a small built dataset, on CPU with one thread and the config's fixed seed, so it
is a deterministic function of the code: test_loss_curve.py reruns it and compares step by step.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "train/configs/debug.yaml"
BASELINE = Path(__file__).resolve().parent / "baselines" / "debug_loss_curve.json"
STEPS = 24
OVERRIDES = [f"trainer.max_steps={STEPS}", "data.build_samples=24", "data.val_samples=2",
             "data.max_tokens=512",
             "trainer.accelerator=cpu", "trainer.devices=1", "trainer.val_check_interval=1000",
             "logging.checkpoint_every_n_steps=1000", "logging.trajectory_every_n_steps=0",
             "logging.final_eval_prompts=0"]
KEYS = ("loss", "ce", "mse")


def debug_curve(work_dir: Path) -> list[dict]:
    """[{"step", "loss", "ce", "mse"}] (a part the step lacks: None) of a fresh debug run under
    ``work_dir`` (one CPU thread)."""
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from procpaint.config import load_config
    from procpaint.training.run import fit

    cfg = load_config(DEBUG, [f"trainer.default_root_dir={work_dir / 'runs'}",
                              f"data.cache_dir={work_dir / 'data'}", *OVERRIDES])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # a thread count changes float reduction order
    try:
        result = fit(cfg)
    finally:
        torch.set_num_threads(threads)
    acc = EventAccumulator(result.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    series = {k: {e.step: e.value for e in acc.Scalars(f"train/{k}")} for k in KEYS}
    # None (JSON null) where a step lacks a part: no noised latent in the pack means no MSE
    return [{"step": s, **{k: None if math.isnan(series[k][s]) else series[k][s] for k in KEYS}}
            for s in sorted(series["loss"])]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        curve = debug_curve(Path(tmp))
    import torch

    BASELINE.parent.mkdir(parents=True, exist_ok=True)
    about = ("train/fit.py --config train/configs/debug.yaml " + " ".join(OVERRIDES)
             + " on CPU, 1 thread; regenerate with python tests/training/loss_curve.py")
    rows = ",\n".join("  " + json.dumps(row) for row in curve)          # one step per line
    BASELINE.write_text(f'{{"about": {json.dumps(about)},\n "torch": {json.dumps(torch.__version__)},\n'
                        f' "steps": [\n{rows}\n]}}\n')
    print(f"wrote {BASELINE} ({len(curve)} steps, loss {curve[0]['loss']:.4f} -> {curve[-1]['loss']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
