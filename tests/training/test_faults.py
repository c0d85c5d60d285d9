"""Fault injection on real training runs (debug preset): NaN gradients on one process, or a NaN loss
on one of two DDP ranks, skip the update everywhere (a lone NaN step: training goes on and finishes;
too many in a row: both ranks stop) and never reach a checkpoint."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch

from procpaint.config import load_config
from procpaint.training.module import NonFiniteLossError
from procpaint.training.run import fit

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "train/configs/debug.yaml"


def _overrides(tmp_path):
    return [f"trainer.default_root_dir={tmp_path / 'runs'}",
            f"data.cache_dir={tmp_path.parent / 'data_cache'}",
            "logging.trajectory_every_n_steps=0", "logging.final_eval_prompts=0"]


def _finite(ckpt: Path) -> bool:
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    return all(bool(torch.isfinite(v).all()) for key in ("state_dict", "current_model_state")
               for v in ck.get(key, {}).values() if v.is_floating_point())


class _NaNGrads(L.Callback):
    """From step ``start`` on, a NaN in one gradient (as an overflowing backward would leave)."""

    def __init__(self, start: int):
        self.start = start

    def on_after_backward(self, trainer, module):
        if trainer.global_step >= self.start:
            next(p for p in module.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")


def test_nan_gradients_never_reach_a_checkpoint(tmp_path):
    cfg = load_config(DEBUG, [*_overrides(tmp_path), "trainer.max_steps=6", "loss.max_nonfinite_steps=3"])
    with pytest.raises(NonFiniteLossError, match="3 consecutive non-finite"):
        fit(cfg, extra_callbacks=[_NaNGrads(start=1)])
    ckpts = sorted((tmp_path / "runs").rglob("*.ckpt"))
    assert [p.name for p in ckpts] == ["last.ckpt", "step000003.ckpt"]
    assert all(_finite(p) for p in ckpts)
    assert not list((tmp_path / "runs").rglob("export"))          # no export of a failed run


DDP_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from procpaint.training import module as M

_loss, _step = M.packed_loss, M.ProcPaintModule._shared_step


def _nan_loss(ce_logits, *args, **kw):       # a NaN logit: the loss of this rank alone is NaN
    return _loss(ce_logits * float("nan"), *args, **kw)


def _shared_step(self, batch, stage):        # rank 1 alone, at the training steps {nan_steps}
    nan = stage == "train" and self.global_rank == 1 and self.global_step in {nan_steps}
    M.packed_loss = _nan_loss if nan else _loss
    return _step(self, batch, stage)


M.ProcPaintModule._shared_step = _shared_step
sys.path.insert(0, {train!r})
import fit
sys.exit(fit.main(sys.argv[1:]))
"""


def _fit_ddp_with_nan(tmp_path, nan_steps: str, *args) -> subprocess.CompletedProcess:
    """train/fit.py on 2 CPU ranks (gloo) with rank 1's loss NaN at ``nan_steps`` (a Python expression)."""
    script = tmp_path / "fit_nan_rank1.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(root=str(ROOT), train=str(ROOT / "train"),
                                                        nan_steps=nan_steps)))
    cmd = [sys.executable, str(script), "--config", str(DEBUG), *_overrides(tmp_path), "trainer.strategy=ddp",
           "trainer.devices=2", "trainer.accelerator=cpu", *args]
    # the timeout is the hang detector: a rank left alone in a collective never returns
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_ddp_nan_on_one_rank_stops_both_ranks_cleanly(tmp_path):
    proc = _fit_ddp_with_nan(tmp_path, "range(1, 1000)", "trainer.max_steps=6", "loss.max_nonfinite_steps=3")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "training stopped: 3 consecutive non-finite" in proc.stderr
    assert "non-finite loss on 1 of 2 rank(s) at step 1" in proc.stderr
    ckpts = sorted((tmp_path / "runs").rglob("*.ckpt"))
    assert [p.name for p in ckpts] == ["last.ckpt", "step000003.ckpt"] and all(_finite(p) for p in ckpts)


def test_ddp_nan_on_one_rank_skips_that_step_on_both_and_finishes(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = _fit_ddp_with_nan(tmp_path, "(2,)", "trainer.max_steps=4", "logging.checkpoint_every_n_steps=4",
                             "trainer.val_check_interval=4")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    skip = "non-finite loss on 1 of 2 rank(s) at step 2: skipping the update"
    assert proc.stderr.count(skip) == 2, proc.stderr[-5000:]             # once on each rank
    (events,) = {p.parent for p in (tmp_path / "runs").rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = lambda tag: {e.step: e.value for e in acc.Scalars(tag)}  # noqa: E731
    loss = scalars("train/loss")                                # NaN marks the skipped step
    assert sorted(loss) == [0, 1, 2, 3] and math.isnan(loss[2])
    assert all(math.isfinite(loss[s]) for s in (0, 1, 3))
    assert scalars("train/skipped_steps") == {0: 0.0, 1: 0.0, 2: 1.0, 3: 1.0}
    ckpts = sorted((tmp_path / "runs").rglob("*.ckpt"))
    assert [p.name for p in ckpts] == ["last.ckpt", "step000004.ckpt"] and all(_finite(p) for p in ckpts)


# ----------------------------------------------------------------------------- hangs and resume
def _tiny_dataset(root: Path) -> Path:
    from procpaint.datasets import build_dataset, preset

    if not (root / "manifest.json").is_file():
        build_dataset(root, "all", preset("tiny", multiturn=4, conflict=2, alignment=2, shard_size=4),
                      progress=False)
    return root


def test_stream_with_nothing_packable_is_an_error_not_a_spin(tmp_path):
    """Every sample longer than max_tokens_per_sample (multi-turn samples generate an image: two
    copies of 64 latent tokens): the endless stream raises after one pass
    (it used to spin forever, ignoring SIGTERM)."""
    import threading

    from procpaint.sequence.packing import NothingToPackError
    from procpaint.sequence.tokenizer import TextTokenizer
    from procpaint.training.datamodule import PackStream

    root = _tiny_dataset(tmp_path.parent / "tiny_ds")
    cfg = load_config(DEBUG, [f"data.root={root}", "data.max_tokens_per_sample=67",    # one image + 3
                             "data.p_drop_image=0", "data.p_drop_text=0", "data.subsets=[multiturn]"])
    stream = PackStream(cfg, root, TextTokenizer(root / "tokenizer.json"), rank=0, world_size=1)
    outcome = []

    def pull():
        try:
            next(iter(stream))
        except Exception as exc:  # noqa: BLE001
            outcome.append(exc)

    worker = threading.Thread(target=pull, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert outcome, "the stream never ended (spins over data it cannot pack)"
    assert isinstance(outcome[0], NothingToPackError), outcome
    assert "nothing to pack: 4 sample(s) seen, 4 longer than max_tokens_per_sample=67" in str(outcome[0])


def test_fit_on_unpackable_data_exits_2_with_one_line(tmp_path):
    root = _tiny_dataset(tmp_path.parent / "tiny_ds")
    proc = subprocess.run([sys.executable, str(ROOT / "train/fit.py"), "--config", str(DEBUG),
                           *_overrides(tmp_path),
                           f"data.root={root}", "data.max_tokens_per_sample=67", "data.p_drop_image=0",
                           "data.subsets=[multiturn]", "trainer.max_steps=2"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "nothing to pack" in proc.stderr and "Traceback" not in proc.stderr


STUCK_SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from procpaint.training import datamodule

def stuck(self):            # a stream stuck for ever (as one that never yields a pack was)
    Path({marker!r}).write_text("stuck")
    while True:
        time.sleep(0.05)
    yield

datamodule.PackStream.__iter__ = stuck
sys.path.insert(0, {train!r})
import fit
sys.exit(fit.main(sys.argv[1:]))
"""


def test_sigterm_ends_a_stuck_run(tmp_path):
    import signal
    import time

    marker = tmp_path / "stuck"
    script = tmp_path / "fit_stuck.py"
    script.write_text(STUCK_SCRIPT.format(root=str(ROOT), train=str(ROOT / "train"), marker=str(marker)))
    root = _tiny_dataset(tmp_path.parent / "tiny_ds")
    proc = subprocess.Popen([sys.executable, str(script), "--config", str(DEBUG), *_overrides(tmp_path),
                             f"data.root={root}", "trainer.max_steps=2"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), proc.communicate(timeout=5)
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM did not end the run")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0


@pytest.fixture
def saved_ckpt(tmp_path):
    from procpaint.training.module import ProcPaintModule

    module = ProcPaintModule.from_config(load_config(DEBUG), vocab_size=50)
    path = tmp_path / "debug.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": {}}, path)
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "checkpoint not found"),
    ("truncated", "not a readable procpaint checkpoint"),
    ("other_preset", "holds a model.preset='debug' model, this config builds model.preset='small'"),
])
def test_bad_resume_is_one_line_before_data_preparation(tmp_path, capsys, saved_ckpt, case, message):
    import importlib.util

    ckpt = {"missing": tmp_path / "nope.ckpt", "other_preset": saved_ckpt}.get(case)
    if case == "truncated":
        ckpt = tmp_path / "cut.ckpt"
        ckpt.write_bytes(saved_ckpt.read_bytes()[: saved_ckpt.stat().st_size // 2])
    spec = importlib.util.spec_from_file_location("fit_cli_resume", ROOT / "train" / "fit.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    extra = ["model.preset=small"] if case == "other_preset" else []
    rc = cli.main(["--config", str(DEBUG), *_overrides(tmp_path), f"ckpt_path={ckpt}", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()                                 # nothing prepared or started


def test_unknown_word_in_a_training_record_is_one_line_naming_file_and_line(tmp_path):
    import json
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(_tiny_dataset(tmp_path.parent / "tiny_ds"), root)
    shard = root / "multiturn" / "shard-00000.jsonl"
    lines = shard.read_text().splitlines()
    rec = json.loads(lines[1])
    seg = next(s for s in rec["segments"] if s["type"] == "text" and s["role"] == "prompt")
    seg["text"] = seg["text"] + " zorgly"
    lines[1] = json.dumps(rec)
    shard.write_text("\n".join(lines) + "\n")
    proc = subprocess.run([sys.executable, str(ROOT / "train/fit.py"), "--config", str(DEBUG),
                           *_overrides(tmp_path),
                           f"data.root={root}", "data.subsets=[multiturn]", "trainer.max_steps=2"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = [ln for ln in proc.stderr.splitlines() if "zorgly" in ln]
    assert len(err) == 1 and f"{shard}:2)" in err[0] and "Traceback" not in proc.stderr, proc.stderr[-3000:]


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {root!r})
from fsspec.implementations.local import LocalFileOpener

_write = LocalFileOpener.write

def write(self, data):              # step000006.ckpt: half of it, then kill -9
    if "step000006" in str(self.path):
        _write(self, data[: len(data) // 2])
        self.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return _write(self, data)

LocalFileOpener.write = write
sys.path.insert(0, {train!r})
import fit
sys.exit(fit.main(sys.argv[1:]))
"""


def test_kill_9_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    script = tmp_path / "fit_killed.py"
    script.write_text(KILL_SCRIPT.format(root=str(ROOT), train=str(ROOT / "train")))
    proc = subprocess.run([sys.executable, str(script), "--config", str(DEBUG), *_overrides(tmp_path),
                           "trainer.max_steps=9"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == -9, proc.stderr[-3000:]
    ckpts = {p.name: p for p in (tmp_path / "runs").rglob("*.ckpt")}
    assert set(ckpts) == {"step000003.ckpt", "last.ckpt"}, sorted(ckpts)        # no torn step000006.ckpt
    for p in ckpts.values():
        ck = torch.load(p, map_location="cpu", weights_only=False)
        assert ck["global_step"] == 3 and _finite(p)
