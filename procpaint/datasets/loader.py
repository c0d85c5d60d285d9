"""Streaming a dataset directory as :class:`~procpaint.sequence.types.Sample` s.

Records are dealt round-robin to (rank, DataLoader worker) pairs: record ``k`` of the epoch's shard
order goes to global worker ``k % (world_size * num_workers)``, so every record is seen exactly
once per epoch across a DDP job, whatever the shard sizes. The shard order and an in-memory shuffle
buffer are seeded by (seed, epoch), identically on every rank.

Corrupt data follows ``on_error`` (data/README.md, "Mistakes and faults"). Opening a dataset runs the
fast check :func:`~procpaint.datasets.validate.check_shards` (every listed shard exists and is not
empty, the manifest's sample counts equal the shards' lines); each record is checked as it is read
(JSON, schema, tags, each image present, decodable and of its declared height x width, and with a
``tokenizer`` its words). ``"error"``: the first problem raises :class:`RecordError` naming
``file:line``. ``"skip"``: a manifest problem is a warning (a missing shard is left out); a bad record
is skipped with a warning naming file and line and counted in ``skipped`` during the first pass the
reader makes: a pass deals every record to exactly one (rank, worker) reader, so once all readers
have made it their counts add up to the number of bad records (each DataLoader worker counts in its
own copy of the dataset; training sums them, procpaint/training/datamodule.py). A reader that finds
only bad records raises.
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

from ..io import from_uint8
from ..sequence.plan import RecordError
from ..sequence.tokenizer import TextTokenizer
from ..sequence.types import ImageSegment, Sample, TextSegment
from .config import SUBSETS
from .validate import check_record, check_shards

ON_ERROR = ("error", "skip")


def load_image(path: Path, size: int | None, declared: tuple[int, int] | None = None) -> torch.Tensor:
    """PNG/JPEG/... -> (3, size, size) float32 in [-1, 1] (bicubic resize when sizes differ).

    ValueError when the file is missing, does not decode, or is not ``declared`` = (height, width)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except FileNotFoundError:
        raise ValueError(f"image file {path} does not exist") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is a data problem to report
        raise ValueError(f"image {path} does not decode: {e}") from e
    if declared is not None and (im.height, im.width) != tuple(declared):
        raise ValueError(f"image {path} is {im.height}x{im.width}, "
                         f"record declares {declared[0]}x{declared[1]}")
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(from_uint8(np.asarray(im)))                          # (3, H, W)


def record_to_sample(rec: dict, root: Path, image_size: int | None = None, source: str = "") -> Sample:
    segs = []
    for k, s in enumerate(rec["segments"]):
        if s["type"] == "text":
            segs.append(TextSegment(s["text"], bool(s["loss"]), s.get("role", "text")))
            continue
        declared = (s["height"], s["width"]) if "height" in s and "width" in s else None
        try:
            image = load_image(root / s["path"], image_size, declared)
        except ValueError as e:
            raise ValueError(f"segments[{k}].path: {e}") from e
        segs.append(ImageSegment(image, bool(s["loss"]), "image"))
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
        on_error: "error" (the first corrupt record or manifest problem raises RecordError naming
            file:line) or "skip" (skipped with a warning, counted in ``skipped``). "skip" is the default
            here for direct use; training passes ``data.on_error``, whose default is "error".
        tokenizer: also check each record's words with it (unknown words make a record corrupt).
    """

    def __init__(self, root: str | Path, subsets=None, image_size: int | None = None, *, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True, seed: int = 0, buffer: int = 256,
                 validate: bool = True, on_error: str = "skip", tokenizer: TextTokenizer | None = None):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
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
        self.on_error, self.tokenizer = on_error, tokenizer
        self.epoch, self.skipped = 0, 0
        self._passes, self._counting = 0, False     # only the first pass counts its skips
        problems = check_shards(self.root, man, subsets)
        if problems and on_error == "error":
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise RecordError("; ".join(problems[:3]) + more + "; data.on_error=skip trains on what is there")
        for problem in problems:
            warnings.warn(f"{problem}; reading what is there (on_error='skip')", stacklevel=2)
        self.shards = [p for p in self.shards if p.is_file()]
        if not self.shards:
            raise RecordError(f"no shard of subsets {subsets} listed in {mpath} exists")

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
        """The record's Sample; None for a corrupt record with on_error="skip" (RecordError otherwise)."""
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            return self._corrupt(path, ln, f"record: not valid JSON: {e.msg}")
        if self.validate:
            errs = check_record(rec, self.root, self.tokenizer, images=False)   # images: while decoding
            if errs:
                return self._corrupt(path, ln, "; ".join(f"{f}: {m}" for f, m in errs))
        try:
            return record_to_sample(rec, self.root, self.image_size, f"{path}:{ln}")
        except Exception as e:  # noqa: BLE001 - whatever fails in one record is that record's fault
            return self._corrupt(path, ln, str(e))

    def _corrupt(self, path: Path, ln: int, why: str) -> None:
        if self.on_error == "error":
            raise RecordError(f"{path}:{ln}: {why}; data.on_error=skip skips and counts such records")
        if self._counting:
            self.skipped += 1
        warnings.warn(f"{path}:{ln}: skipped corrupt record: {why}", stacklevel=3)

    def __iter__(self):
        info = get_worker_info()
        nw, wid = (info.num_workers, info.id) if info else (1, 0)
        total, gid = self.world_size * nw, self.rank * nw + wid
        rng = random.Random((self.seed * 1_000_003 + self.epoch) * 1009 + gid)
        self._counting, self._passes = self._passes == 0, self._passes + 1
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
