"""``data.on_error``: a corrupt dataset is refused before training starts, naming file and line
(default, "error"), or its bad records are skipped and counted exactly ("skip") -- through
DataLoader workers, in TensorBoard and in fit's closing summary."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from procpaint.config import ConfigError, load_config
from procpaint.datasets import TrajectoryDataset, build_dataset, preset
from procpaint.sequence.plan import RecordError
from procpaint.sequence.tokenizer import TextTokenizer

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "train/configs/debug.yaml"
SHARD0, SHARD1 = "multiturn/shard-00000.jsonl", "multiturn/shard-00001.jsonl"


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean")
    build_dataset(out, "multiturn", preset("tiny", multiturn=8, conflict=0, alignment=0, shard_size=4),
                  progress=False)
    return out


@pytest.fixture
def root(clean, tmp_path) -> Path:
    return Path(shutil.copytree(clean, tmp_path / "ds"))


# ---------------------------------------------------------------- planted faults: (shard path, line)
def _lines(root: Path, shard: str) -> list[str]:
    return (root / shard).read_text().splitlines()


def _edit(root: Path, shard: str, ln: int, fn) -> tuple[Path, int]:
    lines = _lines(root, shard)
    rec = json.loads(lines[ln - 1])
    fn(rec)
    lines[ln - 1] = json.dumps(rec)
    (root / shard).write_text("\n".join(lines) + "\n")
    return root / shard, ln


def _image(root: Path, shard: str, ln: int) -> Path:
    rec = json.loads(_lines(root, shard)[ln - 1])
    return root / next(s["path"] for s in rec["segments"] if s["type"] == "image")


def truncated_line(root):
    lines = _lines(root, SHARD0)
    lines[1] = lines[1][: len(lines[1]) // 2]
    (root / SHARD0).write_text("\n".join(lines) + "\n")
    return root / SHARD0, 2


def deleted_png(root):
    _image(root, SHARD0, 3).unlink()
    return root / SHARD0, 3


def random_bytes_png(root):
    _image(root, SHARD0, 4).write_bytes(os.urandom(300))
    return root / SHARD0, 4


def wrongly_sized_png(root):
    Image.new("RGB", (8, 8), (200, 30, 30)).save(_image(root, SHARD1, 1))    # the record declares 32x32
    return root / SHARD1, 1


def bad_tag(root):
    def drop_des(rec):
        seg = next(s for s in rec["segments"] if s.get("role") == "plan")
        seg["text"] = seg["text"].replace("</des>", "")
    return _edit(root, SHARD1, 2, drop_des)


def unknown_word(root):
    def add_word(rec):
        rec["segments"][0]["text"] += " zorgly"
    return _edit(root, SHARD1, 3, add_word)


RECORD_FAULTS = [truncated_line, deleted_png, random_bytes_png, wrongly_sized_png, bad_tag, unknown_word]


def dropped_lines(root):      # the manifest says 8 samples, the shards hold 7
    (root / SHARD1).write_text("\n".join(_lines(root, SHARD1)[:-1]) + "\n")
    return root / "manifest.json", 0


def emptied_shard(root):      # used to train without that shard's records, silently
    (root / SHARD1).write_text("")
    return root / SHARD1, 0


def missing_shard(root):
    (root / SHARD1).unlink()
    return root / SHARD1, 0


MANIFEST_FAULTS = [dropped_lines, emptied_shard, missing_shard]


def _cfg(root: Path, tmp_path: Path, *overrides: str):
    return load_config(DEBUG, [f"data.root={root}", "data.subsets=[multiturn]",
                               f"trainer.default_root_dir={tmp_path / 'runs'}",
                               "logging.trajectory_every_n_steps=0", "logging.final_eval_prompts=0",
                               *overrides])


# ---------------------------------------------------------------- on_error=error (the default)
def test_on_error_is_error_or_skip():
    assert load_config(DEBUG, []).data.on_error == "error"
    with pytest.raises(ConfigError, match="data.on_error must be 'error' or 'skip', got 'ignore'"):
        load_config(DEBUG, ["data.on_error=ignore"])


@pytest.mark.parametrize("plant", MANIFEST_FAULTS, ids=lambda f: f.__name__)
def test_default_refuses_a_manifest_the_shards_disagree_with(root, plant):
    path, ln = plant(root)
    with pytest.raises(RecordError, match=re.escape(f"{path}:{ln}: ")):
        TrajectoryDataset(root, on_error="error")


@pytest.mark.parametrize("plant", RECORD_FAULTS, ids=lambda f: f.__name__)
def test_default_stops_at_the_first_bad_record_read_in_a_worker(root, tmp_path, plant):
    """The training stream (two DataLoader workers): the worker's RecordError names file and line
    (the planner names an unknown word as ``(file:line)``)."""
    from procpaint.training.datamodule import ProcPaintDataModule

    path, ln = plant(root)
    dm = ProcPaintDataModule(_cfg(root, tmp_path, "data.num_workers=2"))
    dm.prepare_data()                                           # the fast check passes: counts agree
    with pytest.raises(RecordError, match=re.escape(f"{path}:{ln}") + "[:)]"):
        for _ in zip(range(2), dm.train_dataloader()):          # a pack from each worker
            pass


@pytest.mark.parametrize("plant", [dropped_lines, wrongly_sized_png], ids=lambda f: f.__name__)
def test_default_fit_is_one_line_naming_file_and_line_before_any_step(root, tmp_path, plant):
    """train/fit.py: exit 2, one line, before a model or a trainer exists (the other faults are the
    same RecordError, tested above; an unknown word: tests/training/test_faults.py)."""
    path, ln = plant(root)
    args = [f"data.root={root}", "data.subsets=[multiturn]", f"trainer.default_root_dir={tmp_path / 'runs'}",
            "logging.trajectory_every_n_steps=0", "logging.final_eval_prompts=0"]
    proc = subprocess.run([sys.executable, str(ROOT / "train/fit.py"), "--config", str(DEBUG), *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("data error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"{path}:{ln}: " in errors[0]
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- on_error=skip
def test_skip_yields_every_good_record_and_counts_each_bad_one_once(clean, root):
    bad = {plant(root) for plant in RECORD_FAULTS}
    ids = [json.loads(line)["id"] for shard in (SHARD0, SHARD1) for line in _lines(clean, shard)]
    good = [i for k, i in enumerate(ids) if (root / (SHARD0 if k < 4 else SHARD1), k % 4 + 1) not in bad]
    tok = TextTokenizer(root / "tokenizer.json")
    ds = TrajectoryDataset(root, shuffle=False, on_error="skip", tokenizer=tok)
    with pytest.warns(UserWarning, match="skipped corrupt record") as caught:
        got = [s.id for s in ds]
    assert got == good and ds.skipped == len(bad) == 6
    named = {str(w.message).split(": skipped")[0] for w in caught}
    assert named == {f"{p}:{ln}" for p, ln in bad}
    assert [s.id for s in ds] == good and ds.skipped == 6             # a second pass counts nothing twice


def test_skip_warns_about_a_manifest_problem_and_reads_what_is_there(root):
    path, _ = missing_shard(root)
    with pytest.warns(UserWarning, match=re.escape(f"{path}:0: shard: file listed in the manifest")):
        ds = TrajectoryDataset(root, on_error="skip")
    assert len(list(ds)) == 4 and ds.skipped == 0


def test_training_stream_workers_read_each_record_once_per_pass(clean, tmp_path):
    """The exact counts rest on this: inside a DataLoader worker the dataset deals records to
    (rank, worker) itself (PackStream used to deal them to workers a second time: half unread)."""
    from torch.utils.data import DataLoader

    from procpaint.training.datamodule import ProcPaintDataModule

    stream = ProcPaintDataModule(_cfg(clean, tmp_path, "data.num_workers=2")).train_dataloader().dataset
    loader = DataLoader(stream._dataset(), batch_size=None, num_workers=2, collate_fn=lambda x: x)
    ids = [s.id for s in loader]
    assert sorted(ids) == [f"multiturn-{i:07d}" for i in range(8)]


def test_skip_counts_reach_the_main_process_from_workers(root, tmp_path):
    """Each worker's packs carry its count; the workers' counts add up to the bad records."""
    from procpaint.training.datamodule import ProcPaintDataModule

    for plant in (truncated_line, random_bytes_png, unknown_word):   # every worker keeps a good record
        plant(root)
    dm = ProcPaintDataModule(_cfg(root, tmp_path, "data.num_workers=2", "data.on_error=skip"))
    dm.prepare_data()
    counts = {}                                    # (the workers' warnings go to their own stderr)
    for _, pack in zip(range(4), dm.train_dataloader()):
        counts[pack.stats["worker"]] = pack.stats["skipped_records"]
    assert sorted(counts) == [0, 1] and sum(counts.values()) == 3


def test_skip_fit_logs_and_summarises_the_count(root, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from procpaint.training.run import fit

    for plant in (deleted_png, wrongly_sized_png, bad_tag):
        plant(root)
    cfg = _cfg(root, tmp_path, "data.num_workers=2", "data.on_error=skip", "trainer.max_steps=2",
               "trainer.val_check_interval=null", "logging.checkpoint_every_n_steps=2")
    with pytest.warns(UserWarning, match="skipped corrupt record"):
        result = fit(cfg)
    summary = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Skipped records")]
    assert summary and summary[0].startswith("Skipped records  : 3 corrupt training records"), summary
    acc = EventAccumulator(result.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/skipped_records")][-1] == 3
