"""Streaming a dataset directory as :class:`~procpaint.sequence.types.Sample` s.

Records are dealt round-robin to (rank, DataLoader worker) pairs: record ``k`` of the epoch's shard
order goes to global worker ``k % (world_size * num_workers)``, so every record is seen exactly
once per epoch across a DDP job, whatever the shard sizes. The shard order and an in-memory shuffle
buffer are seeded by (seed, epoch), identically on every rank. A corrupt record (bad JSON, missing
field, missing or undecodable image) is skipped with a warning naming file and line and counted in
``skipped``; a worker that finds only corrupt records raises.
"""

from __future__ import annotations

import contextlib
import json
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from ..sequence.types import ImageSegment, Sample, TextSegment
from .config import SUBSETS
from .validate import check_record


def load_image(path: Path, size: int | None) -> torch.Tensor:
    """PNG/JPEG/... -> (3, size, size) float32 in [-1, 1] (bicubic resize when sizes differ)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        arr = np.asarray(im, dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous() / 127.5 - 1.0      # (3, H, W)


def record_to_sample(rec: dict, root: Path, image_size: int | None = None, source: str = "") -> Sample:
    segs = []
    for s in rec["segments"]:
        if s["type"] == "text":
            segs.append(TextSegment(s["text"], bool(s["loss"]), s.get("role", "text")))
        else:
            segs.append(ImageSegment(load_image(root / s["path"], image_size), bool(s["loss"]), "image"))
    meta = {k: rec.get(k) for k in ("prompt", "tag", "label", "ops", "errors")}
    meta["source"] = source
    return Sample(segs, eos=bool(rec["eos"]), kind=rec["kind"], id=rec["id"], meta=meta)


class TrajectoryDataset(IterableDataset):
    """Yields ``Sample`` s from a directory written by ``data/build.py`` (or by a user, same format).

    Args:
        root: dataset directory (holds manifest.json).
        subsets: which subsets to stream (default: all in the manifest).
        image_size: resize every image to (image_size, image_size); None keeps the stored size.
        rank, world_size: this process's DDP rank and the number of ranks.
        shuffle, seed: seeded shard order + shuffle buffer per epoch (``set_epoch``).
        validate: run the record schema check on each record before decoding (cheap).
    """

    def __init__(self, root: str | Path, subsets=None, image_size: int | None = None, *, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True, seed: int = 0, buffer: int = 256,
                 validate: bool = True):
        self.root = Path(root)
        mpath = self.root / "manifest.json"
        if not mpath.exists():
            raise FileNotFoundError(f"no manifest.json in {self.root}: not a dataset directory or an "
                                    f"unfinished build (re-run `python data/build.py all --out {self.root}`)")
        man = json.loads(mpath.read_text())
        avail = man.get("subsets", {})
        subsets = list(avail) if subsets is None else [subsets] if isinstance(subsets, str) else list(subsets)
        missing = [s for s in subsets if s not in avail]
        if missing:
            raise KeyError(f"subset(s) {missing} not in {mpath} (has {sorted(avail)}; known {SUBSETS})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.shards = [self.root / sh for s in subsets for sh in avail[s]["shards"]]
        self.num_records = sum(avail[s].get("samples", 0) for s in subsets)
        if not self.shards or self.num_records == 0:
            raise ValueError(f"dataset {self.root} has no records in subsets {subsets}")
        self.image_size, self.rank, self.world_size = image_size, rank, world_size
        self.shuffle, self.seed, self.buffer, self.validate = shuffle, seed, buffer, validate
        self.epoch, self.skipped = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _lines(self, gid: int, total: int):
        """(path, line number, line) of this reader's records. Shards are read interleaved, one
        line from each in turn (in a seeded order), so a stream mixes subsets from its first record
        on instead of draining one subset's shard after another (which would make whole packs
        text-only or image-only)."""
        order = list(self.shards)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        k = 0
        with contextlib.ExitStack() as stack:
            readers = [(path, enumerate(stack.enter_context(open(path, encoding="utf-8")), 1))
                       for path in order]
            while readers:
                alive = []
                for path, lines in readers:
                    item = next(lines, None)
                    if item is None:
                        continue
                    alive.append((path, lines))
                    if k % total == gid:
                        yield path, item[0], item[1]
                    k += 1
                readers = alive

    def _parse(self, path: Path, ln: int, line: str) -> Sample | None:
        try:
            rec = json.loads(line)
            if self.validate:
                errs = [e for e in check_record(rec, self.root, None) if not e[0].endswith(".path")]
                if errs:
                    raise ValueError("; ".join(f"{f}: {m}" for f, m in errs))
            return record_to_sample(rec, self.root, self.image_size, f"{path}:{ln}")
        except Exception as e:  # noqa: BLE001 - a bad record must never end an epoch
            self.skipped += 1
            warnings.warn(f"{path}:{ln}: skipped corrupt record: {e}", stacklevel=2)
            return None

    def __iter__(self):
        info = get_worker_info()
        nw, wid = (info.num_workers, info.id) if info else (1, 0)
        total, gid = self.world_size * nw, self.rank * nw + wid
        rng = random.Random((self.seed * 1_000_003 + self.epoch) * 1009 + gid)
        buf, seen, good = [], 0, 0
        for path, ln, line in self._lines(gid, total):
            seen += 1
            sample = self._parse(path, ln, line)
            if sample is None:
                continue
            good += 1
            if not self.shuffle:
                yield sample
                continue
            buf.append(sample)
            if len(buf) >= self.buffer:
                yield buf.pop(rng.randrange(len(buf)))
        rng.shuffle(buf)
        yield from buf
        if seen and not good:
            raise RuntimeError(f"all {seen} records this worker read from {self.root} are corrupt "
                               f"(see the warnings above); run `python data/build.py validate {self.root}`")
