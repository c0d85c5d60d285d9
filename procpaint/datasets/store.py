"""Building a dataset directory: sharded JSONL + PNG images + tokenizer.json + manifest.json.

Layout (data/README.md)::

    DIR/manifest.json                      written last: its presence means "complete"
    DIR/tokenizer.json                     WordLevel over the world's + knowledge facts' words
    DIR/<subset>/shard-00000.jsonl         one record per line
    DIR/<subset>/shard-00000.stats.json    per-shard statistics (resume bookkeeping)
    DIR/<subset>/images/00000/*.png        images, referenced by relative path
    DIR/<subset>/state.json                the settings the subset was built with

Every file goes to a temporary name and is renamed; a shard's images go to a temporary folder that
is renamed as a whole (one rename per shard instead of one per image). A shard counts as done when
its JSONL exists; a re-run with the same settings skips done shards (resume); with different settings
it refuses to touch a subset that holds finished shards unless ``overwrite=True`` (then it removes the
subset's files and rebuilds). One build at a time per directory: ``DIR/.build.lock`` holds the
builder's pid. Each sample is a pure function of (seed, subset, index) --
self-sampled conflict shards of (seed, shard, checkpoint weights), as the model samples a shard's
prompts in batches -- and shards are written whole by one worker, so output is byte-identical for
any ``workers``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import struct
import zlib
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..io import atomic_write
from ..sequence.tokenizer import TextTokenizer, build_word_level
from ..world.language import vocabulary
from ..world.scene import BACKGROUND, COLORS, GRID, SHAPES, SIZES
from . import self_sample
from .config import BUILDER_REVISION, FORMAT_VERSION, SELF_KEYS, SUBSETS, BuildConfig
from .records import Context, make_record

_CTX: dict = {}


PNG_LEVEL = 1          # zlib level: 32-px images compress to ~370 B at 1 vs ~310 B at 6, 1.5x faster


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_bytes(img, level: int = PNG_LEVEL) -> bytes:
    """(H, W, 3) uint8 -> PNG (8-bit RGB, no filter, no ancillary chunks).

    Written directly with zlib: Pillow's encoder costs ~3x more per tiny image in Python overhead.
    The bytes are a pure function of the pixels and the zlib build (as Pillow's were)."""
    h, w, _ = img.shape
    rows = np.zeros((h, w * 3 + 1), np.uint8)          # each scanline: filter byte 0 + RGB
    rows[:, 1:] = img.reshape(h, w * 3)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + _png_chunk(b"IEND", b""))


def _self_sampled(cfg: BuildConfig, subset: str) -> bool:
    return subset == "conflict" and cfg.conflict_source == "self"


def _subset_state(cfg: BuildConfig, subset: str, ckpt_sha: str | None = None) -> dict:
    d = cfg.to_dict()
    for other in SUBSETS:
        if other != subset:
            d.pop(other)
    state = {"format_version": FORMAT_VERSION, "builder_revision": BUILDER_REVISION, "subset": subset,
             "config": d}
    if _self_sampled(cfg, subset):            # a different checkpoint restarts the subset
        state["checkpoint"] = {"sha256": ckpt_sha}
    else:                                     # self-sampling knobs do not touch these records
        for k in SELF_KEYS:
            d.pop(k)
    return state


def _build_shard(job) -> dict:
    cfg_dict, subset, shard, start, end, out, sampler = job
    key = json.dumps(cfg_dict, sort_keys=True)
    if key not in _CTX:
        _CTX.clear()
        _CTX[key] = Context(BuildConfig(**cfg_dict))
    ctx, out = _CTX[key], Path(out)
    st = {"samples": 0, "images": 0, "images_max": 0, "positive": 0, "negative": 0, "rejected": 0,
          "tags": Counter(), "ops": Counter(), "errors": Counter()}
    lines = []
    if sampler is not None:        # (checkpoint, device): self-sampled conflict, sampled before any write
        made, st["self"] = self_sample.shard_records(ctx, *sampler, shard, start, end)
    else:
        made = (make_record(ctx, subset, i, shard) for i in range(start, end))
    # Images go to a private folder renamed into place once the shard's images are complete.
    final = out / subset / "images" / f"{shard:05d}"
    for stale in final.parent.glob(f".{final.name}.tmp*"):   # left by an interrupted build
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True)
    prefix = f"{subset}/images/{shard:05d}/"
    for rec, images, rejected in made:
        for rel, img in images:
            if not rel.startswith(prefix):
                raise ValueError(f"image path {rel!r} is outside its shard folder {prefix!r}")
            fd = os.open(tmp / rel[len(prefix):], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:                                              # raw fd: no buffered-file wrapper
                data = png_bytes(img)
                if os.write(fd, data) != len(data):
                    raise OSError(f"short write of {rel} (disk full?)")
            finally:
                os.close(fd)
        lines.append(json.dumps(rec, sort_keys=True, separators=(",", ":")))
        st["samples"] += 1
        st["images"] += len(images)
        st["images_max"] = max(st["images_max"], len(images))
        st["rejected"] += rejected
        if rec["label"] in ("positive", "negative"):
            st[rec["label"]] += 1
        st["tags"][rec["tag"]] += 1
        st["ops"].update(rec["ops"])
        st["errors"].update(rec["errors"])
    if final.exists():                                       # images of an interrupted build
        shutil.rmtree(final)
    tmp.rename(final)
    base = out / subset / f"shard-{shard:05d}"
    atomic_write(base.with_suffix(".stats.json"), json.dumps(st, sort_keys=True).encode())
    atomic_write(base.with_suffix(".jsonl"), "".join(ln + "\n" for ln in lines).encode())   # marks it done
    return st


def _merge(stats: list[dict]) -> dict:
    tot = {"samples": 0, "images": 0, "images_max": 0, "positive": 0, "negative": 0, "rejected": 0}
    hists = {"tags": Counter(), "ops": Counter(), "errors": Counter()}
    for s in stats:
        for k in tot:
            tot[k] = max(tot[k], s[k]) if k == "images_max" else tot[k] + s[k]
        for k in hists:
            hists[k].update(s[k])
    n = max(tot["samples"], 1)
    out = {"samples": tot["samples"], "images": tot["images"], "rejected_constructions": tot["rejected"],
           "images_per_sample": {"avg": round(tot["images"] / n, 4), "max": tot["images_max"]},
           "positive": tot["positive"], "negative": tot["negative"],
           **{k: dict(sorted(v.items())) for k, v in hists.items()}}
    if any("self" in s for s in stats):
        out["self_sampled"] = self_sample.merge_stats([s["self"] for s in stats if "self" in s])
    return out


def dataset_vocabulary() -> list[str]:
    """The words of the built tokenizer: the world's grammar plus the knowledge benchmark's prompts
    and the fact corpus (procpaint.world.facts.vocabulary).

    The fact words occur in training text through the fact-corpus records and the trained facts'
    prompts (BuildConfig.fact_share, knowledge_share); every checkpoint trained on a built dataset can
    read the knowledge benchmark's prompts, held-out facts included.
    """
    from ..world.facts import vocabulary as knowledge_vocabulary

    return sorted({*vocabulary(), *knowledge_vocabulary()})


class BuildLockedError(RuntimeError):
    """Another live process is building into the same directory."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                   # exists, owned by someone else
        return True
    return True


class _BuildLock:
    """``DIR/.build.lock`` with the holder's pid (O_EXCL create); a lock whose holder died is taken over."""

    def __init__(self, out: Path):
        self.path = out / ".build.lock"

    def __enter__(self):
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _pid_alive(pid):
                    raise BuildLockedError(
                        f"{self.path.parent} is being built by another process (pid {pid}, lock "
                        f"{self.path}); wait for it, or remove the lock if that process is gone") from None
                self.path.unlink(missing_ok=True)            # its holder died: stale
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{os.getpid()}\n")
            return self
        raise BuildLockedError(f"could not take the build lock {self.path}")

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _changed(old: dict, new: dict) -> str:
    """The settings that differ between two subset states, for an error message."""
    a, b = old.get("config", {}), new.get("config", {})
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    diffs = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:4]] + (["..."] if len(keys) > 4 else [])
    if old.get("format_version") != new.get("format_version"):
        diffs.insert(0, f"format_version {old.get('format_version')} -> {new.get('format_version')}")
    if old.get("builder_revision") != new.get("builder_revision"):
        diffs.insert(0, f"builder_revision {old.get('builder_revision')} -> {new.get('builder_revision')}")
    if old.get("checkpoint") != new.get("checkpoint"):
        diffs.append("checkpoint")
    return ", ".join(diffs) or "settings"


def _worker_init() -> None:
    """Pool workers die with their parent (Linux): a killed build leaves no orphan writing shards."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)     # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass                                                                 # not Linux: best effort
    if os.getppid() == 1:                                                    # parent already gone
        os._exit(1)


def build_dataset(out: str | Path, subsets=SUBSETS, cfg: BuildConfig | None = None, *, workers: int = 1,
                  progress: bool = True, checkpoint: str | None = None, device: str = "cpu",
                  overwrite: bool = False) -> dict:
    """Build (or resume) ``subsets`` into ``out`` and return the manifest written last.

    A subset already in ``out`` with other settings and finished shards is a ValueError naming what
    changed, unless ``overwrite`` (its files are then replaced); a second concurrent build into
    ``out`` is a :class:`BuildLockedError` naming the first one's pid.

    ``checkpoint`` (a multi-turn ``.ckpt`` or export directory, as ``load_generator`` accepts) selects
    self-sampled conflict data (``conflict_source="self"``, sampled on ``device``; see self_sample.py).
    Training calls this to create the default dataset in a cache directory when it is missing.
    """
    cfg = cfg or BuildConfig()
    if subsets in ("all", None):
        subsets = SUBSETS
    subsets = (subsets,) if isinstance(subsets, str) else tuple(subsets)
    bad = set(subsets) - set(SUBSETS)
    if bad:
        raise ValueError(f"unknown subset(s) {sorted(bad)}; choose from {SUBSETS} or 'all'")
    sampler, ckpt_sha = None, None
    if "conflict" in subsets:
        if checkpoint is not None and cfg.conflict_source == "symbolic":
            cfg = replace(cfg, conflict_source="self")        # a checkpoint means self-sampling
        if cfg.conflict_source == "self":
            if checkpoint is None:
                raise ValueError("BuildConfig.conflict_source='self' needs a multi-turn checkpoint "
                                 "(build_dataset(..., checkpoint=CKPT) / data/build.py --checkpoint CKPT)")
            ckpt_sha = self_sample.checkpoint_digest(checkpoint)
            sampler = (str(checkpoint), str(device))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _BuildLock(out):
        return _build_locked(out, subsets, cfg, workers, progress, sampler, ckpt_sha, overwrite)


def _build_locked(out: Path, subsets, cfg: BuildConfig, workers: int, progress: bool, sampler, ckpt_sha,
                  overwrite: bool) -> dict:
    manifest_path = out / "manifest.json"
    states = {sub: _subset_state(cfg, sub, ckpt_sha) for sub in subsets}
    for sub, state in states.items():                  # refuse before deleting anything
        state_path = out / sub / "state.json"
        if state_path.exists() and not overwrite:
            old = json.loads(state_path.read_text())
            if old != state and any((out / sub).glob("shard-*.jsonl")):
                raise ValueError(f"{out / sub} was built with other settings ({_changed(old, state)}); "
                                 f"building over it would delete it: pass --overwrite to replace it, or "
                                 f"build into another --out")
    jobs = []
    for sub in subsets:
        state = states[sub]
        state_path = out / sub / "state.json"
        if state_path.exists() and json.loads(state_path.read_text()) != state:
            manifest_path.unlink(missing_ok=True)              # settings changed: restart cleanly
            shutil.rmtree(out / sub)
        if not state_path.exists():
            manifest_path.unlink(missing_ok=True)
            atomic_write(state_path, json.dumps(state, sort_keys=True, indent=1).encode())
        n = cfg.size(sub)
        for shard, start in enumerate(range(0, n, cfg.shard_size)):
            if not (out / sub / f"shard-{shard:05d}.jsonl").exists():
                jobs.append((cfg.to_dict(), sub, shard, start, min(start + cfg.shard_size, n), str(out),
                             sampler if _self_sampled(cfg, sub) else None))
    if jobs:
        manifest_path.unlink(missing_ok=True)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=sum(j[4] - j[3] for j in jobs), unit="sample", desc="building")
        if workers > 1:
            with mp.get_context("fork").Pool(workers, initializer=_worker_init) as pool:
                for st in pool.imap_unordered(_build_shard, jobs):
                    bar and bar.update(st["samples"])
        else:
            for job in jobs:
                st = _build_shard(job)
                bar and bar.update(st["samples"])
        bar and bar.close()
    tok_path = out / "tokenizer.json"
    TextTokenizer(build_word_level(dataset_vocabulary())).save(tok_path)
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"subsets": {}}
    for sub in SUBSETS:                                        # every complete subset in the directory
        state_path = out / sub / "state.json"
        if not state_path.exists():
            continue
        sub_state = json.loads(state_path.read_text())
        sub_cfg = sub_state["config"]
        n = BuildConfig(**{**sub_cfg, sub: sub_cfg.get(sub, 0)}).size(sub)
        shards = [f"{sub}/shard-{k:05d}.jsonl" for k in range(-(-n // sub_cfg["shard_size"]))]
        if all((out / s).exists() for s in shards):
            stats = [json.loads((out / s.replace(".jsonl", ".stats.json")).read_text()) for s in shards]
            manifest["subsets"][sub] = {"shards": shards, **_merge(stats), "config": sub_cfg}
            if "checkpoint" in sub_state:
                manifest["subsets"][sub]["checkpoint"] = sub_state["checkpoint"]
    manifest.update({
        "format_version": FORMAT_VERSION, "seed": cfg.seed, "tokenizer": "tokenizer.json",
        "world": {"image_size": cfg.image_size, "grid": GRID, "shapes": list(SHAPES), "colors": list(COLORS),
                  "sizes": list(SIZES), "background": list(BACKGROUND), "painter": cfg.painter,
                  "judge": cfg.judge},
    })
    atomic_write(manifest_path, json.dumps(manifest, sort_keys=True, indent=1).encode())
    return manifest


def with_samples(cfg: BuildConfig, subsets, n: int) -> BuildConfig:
    """Config with ``n`` samples for each named subset (the CLI's ``--samples``)."""
    return replace(cfg, **{s: n for s in subsets})
