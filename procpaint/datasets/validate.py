"""``validate(DIR)``: every problem of a dataset directory as ``file:line: field: what is wrong``;
``check_shards``: its fast part (manifest against shards), which training runs before it starts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from ..sequence.tokenizer import SPECIAL_TOKENS, TAGS, TextTokenizer, UnknownWordsError
from .config import FORMAT_VERSION, SUBSETS

ROLES = {"prompt", "plan", "critique", "refine", "instruction", "text", "fact", "image"}
KINDS = (*SUBSETS, "single_pass", "fact")      # fact: a text-only fact-corpus record (any subset)
LABELS = (None, "positive", "negative")
_PLAN = re.compile(r"^<ins>[^<>]+</ins><des>[^<>]+</des>$")
_REFINE = re.compile(r"^<refine>[^<>]+</refine>$")
_MARKERS = tuple(t for t in SPECIAL_TOKENS if t not in TAGS)     # <pad> <eos> <unk> <|vision_start|> ...


def tag_problem(role: str | None, text: str) -> str | None:
    """What is wrong with the tags of a ``role`` text (None: nothing): a plan is exactly
    ``<ins>...</ins><des>...</des>``, a refine ``<refine>...</refine>``, any other text has no tags."""
    if role == "plan" and not _PLAN.match(text):
        return "a plan must be <ins>...</ins><des>...</des>"
    if role == "refine" and not _REFINE.match(text):
        return "a refine text must be <refine>...</refine>"
    if role not in ("plan", "refine") and re.search(r"</?(ins|des|refine)>", text):
        return f"tags are not allowed in a {role} segment"
    marker = next((t for t in _MARKERS if t in text), None)
    if marker:
        return f"the special token {marker} is not allowed in text (the sequence builder places it)"
    return None


def check_record(rec, root: Path, tok: TextTokenizer | None, *, images: bool = True) -> list[tuple[str, str]]:
    """(field, problem) pairs of one parsed record; empty when it is well formed. ``tok``: also check
    the words; ``images=False``: check image paths but leave opening them to the caller (the loader
    checks each image as it decodes it)."""
    if not isinstance(rec, dict):
        return [("record", f"must be a JSON object, got {type(rec).__name__}")]
    errs = []
    for key, typ in (("id", str), ("kind", str), ("segments", list), ("eos", bool)):
        if not isinstance(rec.get(key), typ):
            errs.append((key, f"missing or not a {typ.__name__}"))
    if isinstance(rec.get("kind"), str) and rec["kind"] not in KINDS:
        errs.append(("kind", f"{rec['kind']!r} is not one of {KINDS}"))
    if rec.get("label") not in LABELS:
        errs.append(("label", f"{rec.get('label')!r} is not one of {LABELS}"))
    segs = rec.get("segments") if isinstance(rec.get("segments"), list) else []
    if isinstance(rec.get("segments"), list) and not segs:
        errs.append(("segments", "empty"))
    if segs and not any(isinstance(s, dict) and s.get("loss") is True for s in segs) and not rec.get("eos"):
        errs.append(("segments", "no segment has loss=true and eos is false: nothing to train on"))
    for k, s in enumerate(segs):
        f = f"segments[{k}]"
        if not isinstance(s, dict):
            errs.append((f, "must be an object"))
            continue
        if not isinstance(s.get("loss"), bool):
            errs.append((f"{f}.loss", "missing or not a boolean"))
        if rec.get("kind") == "fact" and (s.get("type") != "text" or s.get("role") != "fact"):
            errs.append((f, "a fact record holds only text segments of role 'fact'"))
        if s.get("role", "text") not in ROLES:
            errs.append((f"{f}.role", f"{s.get('role')!r} is not one of {sorted(ROLES)}"))
        if s.get("type") == "text":
            text = s.get("text")
            if not isinstance(text, str) or not text.strip():
                errs.append((f"{f}.text", "missing or empty"))
                continue
            problem = tag_problem(s.get("role"), text)
            if problem:
                errs.append((f"{f}.text", problem))
            if tok is not None:
                try:
                    tok.encode(text)
                except UnknownWordsError as e:
                    errs.append((f"{f}.text", f"unknown words {sorted(set(e.words))}"))
        elif s.get("type") == "image":
            p = s.get("path")
            if not isinstance(p, str) or Path(p).is_absolute() or ".." in Path(p).parts:
                errs.append((f"{f}.path", "missing, absolute or escaping the dataset directory"))
                continue
            if not images:
                continue
            try:
                with Image.open(root / p) as im:
                    im.load()
                    w, h = im.size
                if (s.get("height"), s.get("width")) != (h, w):
                    declared = f"{s.get('height')}x{s.get('width')}"
                    errs.append((f"{f}.path", f"image is {h}x{w}, record declares {declared}"))
            except FileNotFoundError:
                errs.append((f"{f}.path", f"image file {p} does not exist"))
            except Exception as e:  # noqa: BLE001 - any decoder failure is a data problem to report
                errs.append((f"{f}.path", f"image {p} does not decode: {e}"))
        else:
            errs.append((f"{f}.type", f"{s.get('type')!r} is not 'text' or 'image'"))
    return errs


def validate(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        return [f"{root}:0: directory: does not exist" if not root.exists() else f"{root}:0: not a directory"]
    mpath = root / "manifest.json"
    if not mpath.exists():
        return [f"{mpath}:0: manifest: missing (the build did not finish; re-run data/build.py)"]
    try:
        man = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        return [f"{mpath}:{e.lineno}: manifest: not valid JSON: {e.msg}"]
    problems = []
    if man.get("format_version") != FORMAT_VERSION:
        got = man.get("format_version")
        problems.append(f"{mpath}:0: format_version: {got!r}, expected {FORMAT_VERSION}")
    tok = None
    try:
        tok = TextTokenizer(root / man.get("tokenizer", "tokenizer.json"))
    except Exception as e:  # noqa: BLE001
        problems.append(f"{mpath}:0: tokenizer: {e}")
    problems += check_shards(root, man)
    for _, info in sorted(man.get("subsets", {}).items()):
        for shard in info.get("shards", []):
            path = root / shard
            if not path.is_file():
                continue                                        # reported by check_shards
            with open(path, encoding="utf-8") as fh:
                for ln, line in enumerate(fh, 1):
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        problems.append(f"{path}:{ln}: record: not valid JSON: {e.msg}")
                        continue
                    problems += [f"{path}:{ln}: {fld}: {msg}" for fld, msg in check_record(rec, root, tok)]
    return problems


def check_shards(root: Path, manifest: dict, subsets=None) -> list[str]:
    """The fast check (line counts, no record parsed): every shard the manifest lists exists, none is
    empty while its subset has samples, and each subset's shards hold exactly its ``samples`` lines.
    ``subsets``: the ones to check (default: all in the manifest)."""
    mpath = root / "manifest.json"
    avail = manifest.get("subsets", {})
    problems = []
    for sub in sorted(avail if subsets is None else subsets):
        info, count = avail[sub], 0
        for shard in info.get("shards", []):
            path = root / shard
            if not path.is_file():
                problems.append(f"{path}:0: shard: file listed in the manifest does not exist")
                continue
            with open(path, "rb") as fh:
                lines = sum(1 for _ in fh)
            if lines == 0 and info.get("samples"):
                problems.append(f"{path}:0: shard: empty, but subset {sub} has {info.get('samples')} samples "
                                "in the manifest")
            count += lines
        if count != info.get("samples"):
            problems.append(f"{mpath}:0: subsets.{sub}.samples: manifest says {info.get('samples')}, "
                            f"shards hold {count} records")
    return problems
