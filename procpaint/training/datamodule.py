"""The LightningDataModule: procedural (or user) data -> streamed, packed sequences.

Training data is an endless stream: dataset records (sharded by DDP rank and DataLoader worker)
-> ``Sample``s -> the streaming best-fit packer -> one ``PackedBatch`` per step. The stream is a
deterministic function of the seed, so resuming only has to know how many packs were consumed:
:class:`ResumableLoader` reports that (from Lightning's own batch progress) in its state dict and
the stream skips that many packs when it restarts, which makes resumed runs exact.

Corrupt data follows ``data.on_error`` (data/README.md): "error" refuses a dataset whose manifest and
shards disagree before training starts (every rank runs the same fast check) and stops at the first
bad record read, naming file:line (:class:`~procpaint.sequence.plan.RecordError`, one line from
train/fit.py); "skip" skips bad records and reports each worker's count in its packs'
``stats["skipped_records"]`` (with ``stats["worker"]``). The module sums the workers' latest counts
(and the ranks' at the end): the number of bad records, once every reader has made its first pass.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from procpaint.config import Config
from procpaint.datasets.transforms import sample_transform
from procpaint.sequence.tokenizer import TextTokenizer
from procpaint.sequence.types import PackedBatch

log = logging.getLogger(__name__)


def _identity(batch):
    return batch


class PackStream(IterableDataset):
    """Endless stream of PackedBatch for one DDP rank; DataLoader workers split its shards."""

    def __init__(self, cfg: Config, root: Path, tokenizer: TextTokenizer, *, rank: int, world_size: int,
                 split: str = "train"):
        self.cfg, self.root, self.tokenizer = cfg, root, tokenizer
        self.rank, self.world_size, self.split = rank, world_size, split
        self.skip_packs = 0  # set from ResumableLoader.load_state_dict

    def _dataset(self):
        from procpaint.datasets import TrajectoryDataset

        d = self.cfg.data
        # Rank and world size only: iterated inside a DataLoader worker, the dataset deals records to
        # (rank, worker) pairs itself. With on_error=error the planner names a record with unknown
        # words itself (file:line); with skip the reader checks the words too, so such a record is
        # skipped and counted like the rest.
        return TrajectoryDataset(self.root, subsets=d.subsets, image_size=d.image_size, rank=self.rank,
                                 world_size=self.world_size, shuffle=self.split == "train",
                                 seed=self.cfg.seed, on_error=d.on_error,
                                 tokenizer=self.tokenizer if d.on_error == "skip" else None)

    def _samples(self, ds, epoch: int):
        ds.set_epoch(epoch)
        d = self.cfg.data
        transform = sample_transform(d.trajectory, d.self_critique)
        if transform is None:
            return iter(ds)
        return (t for t in map(transform, ds) if t is not None)

    def _packer(self, worker: int):
        from procpaint.sequence.packing import Packer
        from procpaint.sequence.plan import ViTSplits

        d, m = self.cfg.data, self.cfg.model_config()
        return Packer(self.tokenizer, max_tokens=d.max_tokens, max_tokens_per_sample=d.max_tokens_per_sample,
                      overflow_buffer=d.overflow_buffer, pixels_per_token=m.pixels_per_token,
                      max_latent_size=m.max_latent_size, vit=ViTSplits.from_model_config(m),
                      p_drop_text=d.p_drop_text if self.split == "train" else 0.0,
                      p_drop_image=d.p_drop_image if self.split == "train" else 0.0,
                      timestep_shift=self.cfg.loss.timestep_shift,
                      timestep_logit_std=self.cfg.loss.timestep_logit_std,
                      timestep_mix_frac=self.cfg.loss.timestep_mix_frac,
                      timestep_mix_shift=self.cfg.loss.timestep_mix_shift,
                      seed=(self.cfg.seed * 7919 + self.rank) * 131 + worker)

    def __iter__(self) -> Iterator[PackedBatch]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # Workers yield round-robin, so pack k of the loader is pack k // W of worker k % W.
        skip = self.skip_packs // num_workers + (1 if worker < self.skip_packs % num_workers else 0)
        packer = self._packer(worker)
        ds = self._dataset()

        def passes():       # endless, but a pass that gives the packer nothing is an error, not a spin
            for epoch in itertools.count():
                before = packer.accepted
                yield from self._samples(ds, epoch)
                if packer.accepted == before:
                    raise packer.nothing_to_pack(f"{self.root} ({self.split} data of rank {self.rank}, "
                                                 f"worker {worker}, one full pass)")

        packs = packer.pack_stream(passes())
        for i, pack in enumerate(packs):
            if i >= skip:
                pack.stats.update(skipped_records=ds.skipped, worker=worker)   # this worker's, so far
                yield pack


class ResumableLoader(DataLoader):
    """A DataLoader whose state (packs consumed) Lightning saves in checkpoints and restores."""

    def __init__(self, stream: PackStream, consumed_fn, **kwargs):
        super().__init__(stream, batch_size=None, collate_fn=_identity, **kwargs)
        self.consumed_fn = consumed_fn

    def state_dict(self) -> dict:
        return {"packs_consumed": int(self.consumed_fn())}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.skip_packs = int(state.get("packs_consumed", 0))


class ProcPaintDataModule(L.LightningDataModule):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self._tokenizer: TextTokenizer | None = None
        self._val: list[PackedBatch] | None = None

    @property
    def root(self) -> Path:
        d = self.cfg.data
        if d.root is not None:
            return Path(d.root)
        from procpaint.datasets import FORMAT_VERSION
        from procpaint.datasets.config import BUILDER_REVISION
        from procpaint.datasets.store import dataset_vocabulary

        # What the build depends on: its knobs, the record format and the tokenizer's words (a
        # procpaint that adds words rebuilds instead of reusing a cache its prompts cannot be read by).
        vocab = hashlib.sha1(" ".join(dataset_vocabulary()).encode()).hexdigest()[:10]
        key = json.dumps({"n": d.build_samples, "px": d.image_size, "seed": self.cfg.seed,
                          "subsets": sorted(d.subsets), "edit": d.edit_share, "refine": d.refine_share,
                          **{k: getattr(d, k) for k in ("layout", "fact_share", "knowledge_share")
                             if getattr(d, k) is not None},
                          "conflict": d.conflict_source, "conflict_ckpt": d.conflict_ckpt,
                          "format": FORMAT_VERSION, "builder": BUILDER_REVISION,
                          "vocab": vocab}, sort_keys=True)
        return Path(d.cache_dir) / f"procedural-{hashlib.sha1(key.encode()).hexdigest()[:10]}"

    @property
    def val_root(self) -> Path | None:
        """Validation data: data.val_root, or a separately seeded procedural set inside the built one
        (None for user data without a val_root: validation is then off)."""
        if self.cfg.data.val_root is not None:
            return Path(self.cfg.data.val_root)
        return self.root / "val" if self.cfg.data.root is None else None

    def _build(self, out: Path, samples: int, seed: int) -> None:
        from procpaint.datasets import BuildConfig, build_dataset

        base = BuildConfig()
        total = sum(base.size(s) for s in self.cfg.data.subsets)
        sizes = {s: max(1, round(samples * base.size(s) / total)) if s in self.cfg.data.subsets else 0
                 for s in ("multiturn", "conflict", "alignment")}
        d = self.cfg.data
        knobs = {k: getattr(d, k) for k in ("edit_share", "refine_share", "layout", "fact_share",
                                            "knowledge_share")
                 if getattr(d, k) is not None}
        cfg = BuildConfig(seed=seed, image_size=d.image_size, shard_size=max(8, samples // 4),
                         conflict_source=d.conflict_source, **knobs, **sizes)
        log.info("building procedural data into %s (once)", out)
        build_dataset(out, subsets=tuple(d.subsets), cfg=cfg, workers=1, progress=True,
                      checkpoint=d.conflict_ckpt, overwrite=True)      # a cache procpaint owns

    def prepare_data(self) -> None:
        """Build the procedural dataset once (rank 0) when no dataset root was given."""
        root = self.root
        if self.cfg.data.root is not None:
            if not (root / "manifest.json").is_file():
                raise FileNotFoundError(f"data.root={root} has no manifest.json: not a procpaint dataset "
                                        "(build one with `python data/build.py all --out DIR`)")
        elif not (root / "manifest.json").is_file():
            self._build(root, self.cfg.data.build_samples, self.cfg.seed)
        if self.val_root is not None and not (self.val_root / "manifest.json").is_file():
            if self.cfg.data.val_root is not None:
                raise FileNotFoundError(f"data.val_root={self.val_root} has no manifest.json")
            self._build(self.val_root, self.cfg.data.val_samples, self.cfg.seed + 10_000)
        self.check_data()

    def wait_for_data(self, timeout_s: float = 3600.0) -> None:
        """Block until local rank 0 has finished building the data (its manifests are written last)."""
        roots = [r for r in (self.root, self.val_root) if r is not None]
        deadline = time.monotonic() + timeout_s
        while not all((r / "manifest.json").is_file() for r in roots):
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout_s:.0f}s for local rank 0 to build {roots}")
            time.sleep(1.0)
        self.check_data()

    def check_data(self) -> None:
        """The fast check before training (manifest sample counts against the shards' lines; each
        listed shard exists and is not empty): opening a dataset runs it. data.on_error=error: a
        RecordError naming the file; skip: a warning. Every rank checks the same files, so all agree."""
        from procpaint.datasets import TrajectoryDataset

        for root in (self.root, self.val_root):
            if root is not None:
                TrajectoryDataset(root, subsets=self.cfg.data.subsets, on_error=self.cfg.data.on_error)

    def load_tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            path = self.cfg.data.tokenizer or self.root / "tokenizer.json"
            self._tokenizer = TextTokenizer(path, unk=self.cfg.data.unk)
        return self._tokenizer

    def latent_stats(self, num_images: int = 512) -> dict:
        """``{"latent_mean", "latent_std"}`` of the pixel or DCT codec over the first ``num_images`` training
        images (every image role: drafts, contexts, finals), or ``{}`` for codecs that normalise
        themselves (a VAE's scaling/shift factors). Deterministic: the stream is read unshuffled."""
        import torch

        from procpaint.datasets import TrajectoryDataset
        from procpaint.model import build_codec, measure_latent_stats

        mc = self.cfg.model_config(vocab_size=1)
        if mc.codec not in ("pixel", "dct"):
            return {}
        ds = TrajectoryDataset(self.root, subsets=self.cfg.data.subsets, image_size=self.cfg.data.image_size,
                               shuffle=False, seed=self.cfg.seed, on_error=self.cfg.data.on_error)
        images = []
        for sample in ds:
            images += [seg.image for seg in sample.segments if hasattr(seg, "image")]
            if len(images) >= num_images:
                break
        if not images:
            raise RuntimeError(f"no images in the training data {self.root}: cannot measure latent "
                               "statistics")
        mean, std = measure_latent_stats(build_codec(mc), torch.stack(images[:num_images]))
        return {"latent_mean": mean, "latent_std": std}

    def setup(self, stage: str | None = None) -> None:
        self.load_tokenizer()

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> ResumableLoader:
        rank, world = self._rank()
        stream = PackStream(self.cfg, self.root, self.load_tokenizer(), rank=rank, world_size=world)
        progress = lambda: self.trainer.fit_loop.epoch_loop.batch_progress.total.processed  # noqa: E731
        return ResumableLoader(stream, progress, num_workers=self.cfg.data.num_workers,
                               persistent_workers=False)

    def val_dataloader(self) -> DataLoader:
        if self.val_root is None:
            return []
        if self._val is None:
            rank, world = self._rank()
            stream = PackStream(self.cfg, self.val_root, self.load_tokenizer(), rank=rank, world_size=world,
                                split="val")
            limit = self.cfg.trainer.limit_val_batches or 4
            self._val = list(itertools.islice(iter(stream), limit))
            if not self._val:
                raise RuntimeError(f"no validation data in {self.root}")
        return DataLoader(self._val, batch_size=None, collate_fn=_identity)


