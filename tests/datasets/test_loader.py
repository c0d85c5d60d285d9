"""Streaming Samples: types, resizing, DDP/worker sharding, corrupt-record skipping, held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from procpaint.datasets import TrajectoryDataset, build_dataset, preset
from procpaint.sequence.types import ImageSegment, Sample, TextSegment
from procpaint.world import heldout_prompts, is_heldout, parse_prompt


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds")
    cfg = preset("tiny", multiturn=10, conflict=6, alignment=6, shard_size=4)
    build_dataset(out, "all", cfg, progress=False)
    return out


def test_yields_samples_with_resized_images(root):
    ds = TrajectoryDataset(root, image_size=16, shuffle=False)
    samples = list(ds)
    assert len(samples) == 22 and all(isinstance(s, Sample) for s in samples)
    imgs = [seg.image for s in samples for seg in s.segments if isinstance(seg, ImageSegment)]
    assert imgs and all(i.shape == (3, 16, 16) and i.dtype == torch.float32 for i in imgs)
    assert all(i.min() >= -1 and i.max() <= 1 for i in imgs)
    mt = [s for s in samples if s.kind == "multiturn"]
    assert all(s.eos and isinstance(s.segments[0], TextSegment) and not s.segments[0].loss for s in mt)


def test_ranks_and_workers_partition_the_records(root):
    ids = []
    for rank in range(2):
        ds = TrajectoryDataset(root, rank=rank, world_size=2, seed=3)
        dl = DataLoader(ds, batch_size=None, num_workers=2, collate_fn=lambda x: x)
        ids += [s.id for s in dl]
    assert len(ids) == 22 and len(set(ids)) == 22


def test_corrupt_records_are_skipped_and_counted(root, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    shard = bad / "multiturn/shard-00000.jsonl"
    lines = shard.read_text().splitlines()
    lines[1] = "{oops"
    rec = json.loads(lines[2])
    rec["segments"][2]["path"] = "multiturn/images/missing.png"
    lines[2] = json.dumps(rec)
    shard.write_text("\n".join(lines) + "\n")
    ds = TrajectoryDataset(bad, subsets="multiturn", shuffle=False)
    with pytest.warns(UserWarning, match=r"shard-00000.jsonl:2: skipped corrupt record"):
        got = list(ds)
    assert len(got) == 8 and ds.skipped == 2


def test_all_corrupt_or_missing_is_a_clear_error(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        TrajectoryDataset(tmp_path)
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    for shard in (bad / "alignment").glob("shard-*.jsonl"):
        shard.write_text("garbage\n" * len(shard.read_text().splitlines()))
    ds = TrajectoryDataset(bad, subsets="alignment")
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="corrupt"):
        list(ds)


def test_heldout_prompts_never_in_training(root):
    train = set()
    for s in TrajectoryDataset(root, subsets="multiturn"):
        if s.kind == "fact" or s.meta["tag"] == "knowledge":     # see tests/datasets/test_knowledge_data.py
            continue
        train.add(s.meta["prompt"])
        assert not is_heldout(parse_prompt(s.meta["prompt"]), 0.05)
    evals = heldout_prompts(20, seed=1)
    assert all(is_heldout(spec, 0.05) for _, spec in evals)
