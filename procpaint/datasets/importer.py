"""``import_trajectories(SRC, OUT)``: your own trajectories (real images + texts) -> a procpaint dataset.

Source layout (data/README.md, "Import your own trajectories"): every ``*.jsonl`` file directly in SRC
(sorted by name), one trajectory per line, images referenced by paths relative to SRC::

    {"id": "sofa-1", "prompt": "a cat on a red sofa", "tag": "optional",
     "steps": [{"plan": "<ins>draw a red sofa</ins><des>a red sofa</des>"}, {"image": "img/1a.jpg"},
               {"critique": "the sofa is blue, not red."}, {"refine": "<refine>make the sofa red</refine>"},
               {"image": "img/1b.png"}, {"plan": "..."}, {"image": "..."}, {"critique": "..."}]}

The steps follow the trajectory grammar of docs/ARCHITECTURE.md (``round := PLAN IMG INSPECT
[REFINE IMG]``, one or more rounds, then EOS). Every text and image is a training target except a
draft that a refine corrects (context only: generation targets are consistent images, as in the
builder). Images of any size and format Pillow reads are resized by
:mod:`procpaint.datasets.buckets` and stored as PNG.

The output is a ``multiturn`` subset (with empty ``conflict`` / ``alignment`` subsets, so the default
``data.subsets`` trains on it), a tokenizer (``tokenizer=`` a tokenizer.json, or a WordLevel over
the imported words), and a manifest recording the source and the image transforms. Everything is
written into a temporary sibling of OUT that is validated and renamed to OUT at the end; on any error
(or interrupt) the temporary directory is removed, so OUT is complete or absent.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import re
import shutil
from collections import Counter
from pathlib import Path

from PIL import Image

from ..io import atomic_write
from ..sequence.tokenizer import TextTokenizer, UnknownWordsError, build_word_level
from .buckets import BAGEL_VAE, BAGEL_VIT, ImageBucket, resize_to_bucket
from .config import FORMAT_VERSION, SUBSETS
from .store import _pid_alive, _worker_init
from .validate import tag_problem, validate

ROLES = ("plan", "image", "critique", "refine")
ON_ERROR = ("error", "skip")
FORMATS = {"png": ".png", "jpeg": ".jpg"}
JPEG_QUALITY = 95
# Trajectory grammar: state -> {step role: next state}; "end" states may close the trajectory.
_GRAMMAR = {
    "start": {"plan": "plan"},
    "plan": {"image": "draft"},
    "draft": {"critique": "critique"},
    "critique": {"refine": "refine", "plan": "plan"},
    "refine": {"image": "refined"},
    "refined": {"plan": "plan"},
}
_ENDS = ("critique", "refined")
_EXPECT = {"start": "a plan (a trajectory starts with one)", "plan": "the plan's image",
           "draft": "a critique of the image", "critique": "a refine or the next plan",
           "refine": "the refined image", "refined": "the next plan"}


class ImportProblems(ValueError):
    """Bad source records, each ``file:line: field: problem``; nothing was written."""

    def __init__(self, problems: list[str], shown: int = 20):
        self.problems = problems
        more = f"\n... and {len(problems) - shown} more" if len(problems) > shown else ""
        super().__init__(f"{len(problems)} problem(s) in the source; nothing written:\n"
                         + "\n".join(problems[:shown]) + more)


def _words(tok, text: str) -> list[str]:
    """The words of ``text`` as the WordLevel tokenizer splits them (its own normaliser and splitter)."""
    plain = re.sub(r"</?(ins|des|refine)>", " ", text)
    return [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(plain))]


def _image(src: Path, rel, bucket: ImageBucket):
    """-> (resized RGB image, source (h, w)) or raise ValueError naming the file."""
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ValueError(f"must be a path relative to {src} (no '..'), got {rel!r}")
    path = src / rel
    try:
        with Image.open(path) as im:
            im.load()
            size = (im.height, im.width)
            return resize_to_bucket(im, bucket), size
    except FileNotFoundError:
        raise ValueError(f"image file {rel} does not exist ({path})") from None
    except IsADirectoryError:
        raise ValueError(f"image {rel} is a directory ({path})") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is a data problem to report
        raise ValueError(f"image {rel} does not decode: {type(e).__name__}: {e}") from None


def convert_record(rec, src: Path, bucket: ImageBucket, tok: TextTokenizer | None):
    """One source record -> (segments, [(image, source size)], problems as (field, message)).

    Checks the record's fields, each step's tags, the trajectory grammar, each image (present,
    decodable) and, with ``tok``, every word."""
    if not isinstance(rec, dict):
        return [], [], [("record", f"must be a JSON object, got {type(rec).__name__}")]
    errs = []
    unknown = sorted(set(rec) - {"id", "prompt", "tag", "steps"})
    if unknown:
        errs.append(("record", f"unknown field(s) {unknown}; a record has id, prompt, tag, steps"))
    if "id" in rec and (not isinstance(rec["id"], str) or not rec["id"].strip()):
        errs.append(("id", "must be a non-empty string"))
    if rec.get("tag") is not None and not isinstance(rec["tag"], str):
        errs.append(("tag", "must be a string"))
    prompt, steps = rec.get("prompt"), rec.get("steps")
    if not isinstance(prompt, str) or not prompt.strip():
        errs.append(("prompt", "missing or empty"))
        prompt = None
    elif tag_problem("prompt", prompt):
        errs.append(("prompt", tag_problem("prompt", prompt)))
    if not isinstance(steps, list) or not steps:
        return [], [], errs + [("steps", "missing, empty or not a list")]
    texts = [("prompt", prompt)] if prompt else []
    roles, images, state = [], [], "start"
    for k, step in enumerate(steps):
        f = f"steps[{k}]"
        if not isinstance(step, dict) or len(step) != 1 or next(iter(step)) not in ROLES:
            errs.append((f, f"must be one of {{\"plan\": ...}}, {{\"image\": ...}}, {{\"critique\": ...}}, "
                            f"{{\"refine\": ...}}; got {json.dumps(step)[:80]}"))
            return [], [], errs                          # the grammar cannot be followed past this
        (role, value), = step.items()
        nxt = _GRAMMAR[state].get(role)
        if nxt is None:
            errs.append((f, f"{role!r} where the trajectory grammar expects {_EXPECT[state]} "
                            "(round := plan image critique [refine image])"))
            return [], [], errs
        state = nxt
        roles.append(role)
        if role == "image":
            try:
                images.append(_image(src, value, bucket))
            except ValueError as e:
                errs.append((f"{f}.image", str(e)))
            continue
        if not isinstance(value, str) or not value.strip():
            errs.append((f"{f}.{role}", "missing or empty text"))
            continue
        problem = tag_problem(role, value)
        if problem:
            errs.append((f"{f}.{role}", f"{problem}, got {value[:80]!r}"))
        texts.append((f"{f}.{role}", value))
    if state not in _ENDS:
        errs.append(("steps", f"the trajectory ends where the grammar expects {_EXPECT[state]}"))
    if tok is not None:
        for field, text in texts:
            try:
                tok.encode(text)
            except UnknownWordsError as e:
                errs.append((field, f"unknown words {sorted(set(e.words))} for the tokenizer"))
    if errs:
        return [], [], errs
    segments = [{"type": "text", "role": "prompt", "text": prompt, "loss": False}]
    it = iter(images)
    for k, (role, step) in enumerate(zip(roles, steps)):
        if role != "image":
            segments.append({"type": "text", "role": role, "text": step[role], "loss": True})
            continue
        corrected = roles[k + 1:k + 3] == ["critique", "refine"]    # a draft its refine corrects
        img, (h0, w0) = next(it)
        segments.append({"type": "image", "role": "image", "path": None, "loss": not corrected,
                         "height": img.height, "width": img.width, "source": step[role],
                         "source_size": [h0, w0]})
    return segments, [img for img, _ in images], []


_TOK: dict = {}


def _encode(img: Image.Image, image_format: str) -> bytes:
    buf = io.BytesIO()
    if image_format == "png":
        img.save(buf, format="PNG", compress_level=1)   # level 1: ~3x faster than 6, ~10% larger
    else:
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _convert_line(job):
    """(path, line number, line, src, bucket, tokenizer path, format) -> (path, line number, record or
    None, segments, [(encoded image, h, w)], problems). Runs in pool workers: what it needs is in ``job``."""
    path, ln, line, src, bucket, tok_path, image_format = job
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        return path, ln, None, [], [], [("record", f"not valid JSON: {e.msg} (column {e.colno})")]
    if tok_path is not None and tok_path not in _TOK:
        _TOK[tok_path] = TextTokenizer(tok_path)
    segs, imgs, errs = convert_record(rec, src, bucket, _TOK.get(tok_path))
    return path, ln, rec, segs, [(_encode(im, image_format), im.height, im.width) for im in imgs], errs


def _tmp_dir(out: Path) -> Path:
    """A fresh temporary sibling of ``out``; those of dead importers are removed first."""
    for stale in out.parent.glob(f".{out.name}.import-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.import-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def import_trajectories(src: str | Path, out: str | Path, *, bucket: ImageBucket = BAGEL_VAE,
                        vit_bucket: ImageBucket = BAGEL_VIT, tokenizer: str | Path | None = None,
                        on_error: str = "error", shard_size: int = 1000, overwrite: bool = False,
                        image_format: str = "png", workers: int = 1) -> dict:
    """Import ``src`` into ``out`` and return the manifest (written last).

    ``bucket``: how stored images are sized (BAGEL's VAE rule by default; its stride must be a
    multiple of the model's pixels per latent token). ``vit_bucket``: recorded for the ViT path (each
    image segment keeps its ``source_size``). ``on_error="error"``: any bad record raises
    :class:`ImportProblems` listing every one as ``file:line: field: problem`` and nothing is written;
    ``"skip"``: bad records are left out, listed in the manifest (``imported.skipped``) and returned
    (``manifest["imported"]["problems"]``); a source without a good record is still an error.
    ``out`` must not exist (or be an empty directory) unless ``overwrite``. ``image_format``: "png"
    (lossless, the default) or "jpeg" (quality 95; ~4x smaller, ~5x faster to write). ``workers``:
    processes that decode, resize and encode (output identical for any number)."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if image_format not in FORMATS:
        raise ValueError(f"image_format must be one of {sorted(FORMATS)}, got {image_format!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"source directory {src} does not exist")
    files = sorted(p for p in src.glob("*.jsonl") if p.is_file())
    if not files:
        raise ImportProblems([f"{src}:0: source: no *.jsonl file (one trajectory per line) in {src}"])
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to "
                              "replace it")
    if tokenizer is not None:
        TextTokenizer(tokenizer)                                         # a bad file fails before any work
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_dir(out)
    try:
        jobs = ((path, ln, line, src, bucket, None if tokenizer is None else str(tokenizer), image_format)
                for path in files for ln, line in _lines(path))
        if workers > 1:
            with mp.get_context("fork").Pool(workers, initializer=_worker_init) as pool:
                results = pool.imap(_convert_line, jobs, chunksize=4)        # in order: same output
                manifest = _import(src, files, tmp, results, bucket, vit_bucket, tokenizer, on_error,
                                   shard_size, image_format)
        else:
            manifest = _import(src, files, tmp, map(_convert_line, jobs), bucket, vit_bucket, tokenizer,
                               on_error, shard_size, image_format)
        problems = validate(tmp)
        if problems:                                     # the importer's own fault, never the user's
            raise RuntimeError("the imported dataset does not validate:\n" + "\n".join(problems[:10]))
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            tmp.rename(out)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _lines(path: Path):
    """(line number, line) of the non-blank lines of a source file."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for ln, line in enumerate(fh, 1):
            if line.strip():
                yield ln, line


def _import(src: Path, files, tmp: Path, results, bucket, vit_bucket, tokenizer, on_error, shard_size,
            image_format) -> dict:
    """Write the good records of ``results`` (``_convert_line``'s, in source order) into ``tmp``."""
    problems, skipped, ids = [], 0, {}
    lines, words, shards = [], set(), []
    stats = {"images": 0, "images_max": 0, "sizes": Counter(), "source_formats": Counter()}
    word_tok = build_word_level([]) if tokenizer is None else None

    def flush():
        name = f"multiturn/shard-{len(shards):05d}.jsonl"
        atomic_write(tmp / name, "".join(ln + "\n" for ln in lines).encode())
        shards.append(name)
        lines.clear()

    for path, ln, rec, segs, imgs, errs in results:
        where = f"{path}:{ln}"
        rid = (rec.get("id") if isinstance(rec, dict) else None) or f"{path.stem}-{ln}"
        if not errs and rid in ids:
            errs = [("id", f"{rid!r} already used at {ids[rid]}")]
        if errs:
            problems += [f"{where}: {fld}: {msg}" for fld, msg in errs]
            skipped += 1
            continue
        ids[rid] = where
        if problems and on_error == "error":
            continue                                     # keep checking; nothing will be kept
        index, shard = len(ids) - 1, len(shards)
        folder = tmp / "multiturn" / "images" / f"{shard:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        image_segs = [s for s in segs if s["type"] == "image"]
        for k, (seg, (data, h, w)) in enumerate(zip(image_segs, imgs)):
            seg["path"] = f"multiturn/images/{shard:05d}/{index:07d}-{k}{FORMATS[image_format]}"
            (tmp / seg["path"]).write_bytes(data)
            stats["sizes"][f"{h}x{w}"] += 1
            stats["source_formats"][Path(seg["source"]).suffix.lower() or "?"] += 1
        stats["images"] += len(imgs)
        stats["images_max"] = max(stats["images_max"], len(imgs))
        if word_tok is not None:
            for seg in segs:
                if seg["type"] == "text":
                    words.update(_words(word_tok, seg["text"]))
        rec_out = {"id": rid, "kind": "multiturn", "eos": True, "label": None, "prompt": rec["prompt"],
                   "tag": rec.get("tag"), "ops": [], "errors": [], "segments": segs,
                   "source": f"{path.name}:{ln}"}
        lines.append(json.dumps(rec_out, sort_keys=True, separators=(",", ":")))
        if len(lines) >= shard_size:
            flush()
    if problems and on_error == "error":
        raise ImportProblems(problems)
    if not ids:
        raise ImportProblems(problems + [f"{src}:0: source: no good trajectory in {len(files)} file(s)"])
    if lines:
        flush()
    if tokenizer is None:
        TextTokenizer(build_word_level(words)).save(tmp / "tokenizer.json")
    else:
        shutil.copyfile(tokenizer, tmp / "tokenizer.json")
    n = len(ids)
    empty = {"shards": [], "samples": 0, "images": 0}
    manifest = {
        "format_version": FORMAT_VERSION, "tokenizer": "tokenizer.json",
        "image_transform": {"vae": bucket.to_dict(), "vit": vit_bucket.to_dict(),
                            "rgb": "EXIF orientation applied; transparency composited on white",
                            "stored": f"{image_format} at the vae bucket size; source_size per image "
                                      "segment"},
        "imported": {"source": str(src.resolve()), "files": [p.name for p in files], "records": n + skipped,
                     "skipped": skipped, "problems": problems,
                     "tokenizer": str(tokenizer) if tokenizer is not None else "built: WordLevel over the "
                                                                              "imported words"},
        "subsets": {"multiturn": {"shards": shards, "samples": n, "images": stats["images"],
                                  "images_per_sample": {"avg": round(stats["images"] / n, 4),
                                                        "max": stats["images_max"]},
                                  "positive": 0, "negative": 0,
                                  "image_sizes": dict(sorted(stats["sizes"].items())),
                                  "source_formats": dict(sorted(stats["source_formats"].items()))},
                    **{s: dict(empty) for s in SUBSETS if s != "multiturn"}},
    }
    atomic_write(tmp / "manifest.json", json.dumps(manifest, sort_keys=True, indent=1).encode())
    return manifest
