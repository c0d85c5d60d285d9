"""GenEval's folder layout and result files, shared by both benchmarks.

    <outdir>/evaluation_metadata.jsonl     every prompt's metadata, one JSON object a line
    <outdir>/<00000>/metadata.jsonl        that prompt's metadata (one line, GenEval's layout)
    <outdir>/<00000>/samples/<0000>.png    its images
    <outdir>/<00000>/trajectories.jsonl    procpaint extra: per image cost, end reason, stage texts
    <outdir>/<00000>/stages/<0000>_<01>_<kind>.png   procpaint extra, opt-in (keep_stages): every
                                           image stage of image <0000>'s trajectory (stage index, kind)
    <outdir>/results.jsonl                 one line per image, GenEval's fields: filename, tag,
                                           prompt, correct, reason, metadata (a JSON string),
                                           details (a JSON string: boxes per class)

Everything is written to a temporary name and renamed (procpaint.io), so an interrupted run leaves
whole files only and a rerun picks up where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import atomic_write, write_image  # noqa: F401 - write_image: the tests' name here


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metadata file not found: {path}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not valid JSON: {exc.msg}") from exc
        if not isinstance(row, dict) or "prompt" not in row:
            raise ValueError(f"{path}:{n}: expected an object with a 'prompt' field")
        rows.append(row)
    return rows


def stratified(metadata: list[dict], n: int | None) -> list[dict]:
    """The first ``n`` prompts taken round-robin over tags (order kept within a tag), so a
    ``--limit`` run still covers every tag; ``n=None`` keeps everything."""
    if n is None or n >= len(metadata):
        return list(metadata)
    by: dict[str, list[dict]] = {}
    for m in metadata:
        by.setdefault(m.get("tag", ""), []).append(m)
    out, k = [], 0
    while len(out) < n:
        for rows in by.values():
            if k < len(rows) and len(out) < n:
                out.append(rows[k])
        k += 1
    return out


def prompt_dir(outdir: Path, index: int) -> Path:
    return Path(outdir) / f"{index:05d}"


def sample_path(outdir: Path, index: int, k: int) -> Path:
    return prompt_dir(outdir, index) / "samples" / f"{k:04d}.png"


def stage_path(outdir: Path, index: int, k: int, stage: int, kind: str) -> Path:
    """Where image ``k`` of prompt ``index`` keeps the image of its stage number ``stage``."""
    return prompt_dir(outdir, index) / "stages" / f"{k:04d}_{stage:02d}_{kind}.png"


def write_prompt(outdir: Path, index: int, metadata: dict) -> None:
    """The prompt folder and its metadata.jsonl (idempotent)."""
    path = prompt_dir(outdir, index) / "metadata.jsonl"
    line = json.dumps(metadata) + "\n"
    if not path.is_file() or path.read_text() != line:
        atomic_write(path, line)


def read_image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def append_jsonl(path: Path, row: dict) -> None:
    """Append one line (a whole line or nothing: single write of a short line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_costs(outdir: Path, index: int) -> dict[int, dict]:
    """{sample k: its latest trajectory record} of one prompt folder (empty if none)."""
    path = prompt_dir(outdir, index) / "trajectories.jsonl"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:          # a torn last line of a killed run
            continue
        out[int(row["sample"])] = row
    return out


def iter_samples(outdir: Path, metadata: list[dict], limit: int | None = None):
    """Yield (prompt index, metadata, png path) for every image present; check folder metadata.

    A folder whose own metadata.jsonl names another prompt than ``metadata[i]`` is an error
    (images scored against the wrong prompt are worse than no score).
    """
    outdir = Path(outdir)
    if not outdir.is_dir():
        raise FileNotFoundError(f"image folder not found: {outdir}")
    n = len(metadata) if limit is None else min(limit, len(metadata))
    for i in range(n):
        folder = prompt_dir(outdir, i)
        own = folder / "metadata.jsonl"
        if own.is_file():
            text = own.read_text().strip().splitlines()
            got = json.loads(text[0]) if text else {}
            if got.get("prompt") != metadata[i]["prompt"]:
                raise ValueError(f"{own}: prompt {got.get('prompt')!r} does not match line {i + 1} of the "
                                 f"metadata file ({metadata[i]['prompt']!r}); wrong --metadata?")
        samples = folder / "samples"
        if samples.is_dir():
            for png in sorted(samples.glob("*.png")):
                if not png.name.startswith("."):
                    yield i, metadata[i], png


def missing_prompts(outdir: Path, metadata: list[dict], limit: int | None = None) -> int:
    n = len(metadata) if limit is None else min(limit, len(metadata))
    return sum(not any((prompt_dir(outdir, i) / "samples").glob("[!.]*.png")) for i in range(n))
