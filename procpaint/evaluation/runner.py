"""Drive a benchmark: generate images into GenEval's layout (resumable) and score a folder.

The generator is anything with ``generate(prompts: list[str], config) -> list[TrajectoryResult]``
(:mod:`procpaint.inference.types`), so tests inject a fake and ``train/evaluate.py`` the real
``procpaint.inference.load_generator(...)``. Scoring reads only images and metadata, so images of
any generator laid out as GenEval expects can be scored.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..io import write_image
from ..world.detect import Detector
from ..world.scene import BACKGROUND
from . import geneval, knowledge
from .layout import (
    append_jsonl,
    iter_samples,
    missing_prompts,
    prompt_dir,
    read_costs,
    read_image,
    sample_path,
    stage_path,
    write_jsonl,
    write_prompt,
)


def progress(iterable=None, total: int | None = None, desc: str = "", enable: bool = True):
    """tqdm when installed; otherwise a plain counter on stderr every 10% (never silent)."""
    try:
        from tqdm.auto import tqdm
        return tqdm(iterable, total=total, desc=desc, disable=not enable, dynamic_ncols=True)
    except ImportError:
        return _Plain(iterable, total, desc, enable)


class _Plain:
    def __init__(self, iterable, total, desc, enable):
        self.it, self.total, self.desc, self.enable, self.n = iterable, total, desc, enable, 0

    def __iter__(self):
        for x in self.it:
            yield x
            self.update(1)

    def update(self, k: int = 1):
        step = max(1, (self.total or 10) // 10)
        before, self.n = self.n, self.n + k
        if self.enable and (self.n // step != before // step or self.n == self.total):
            print(f"{self.desc}: {self.n}/{self.total if self.total is not None else '?'}", file=sys.stderr)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def benchmark_of(metadata: list[dict]) -> str:
    """'knowledge' when the lines carry a ``category`` (and ``spec``), else 'geneval'."""
    return "knowledge" if metadata and "category" in metadata[0] else "geneval"


def summarize(benchmark: str, results: list[dict], *, resamples: int = 2000, seed: int = 0) -> dict:
    """The benchmark's scores (per tag and ``overall``) and ``ci95``: percentile bootstrap 95%
    intervals of each tag and of overall, resampling prompts with replacement within each tag
    (all images of a drawn prompt come along), the benchmark's own ``overall`` rule per resample."""
    out = (knowledge.summarize if benchmark == "knowledge" else geneval.summarize)(results)
    by_tag: dict[str, dict[str, list[bool]]] = {}
    for r in results:
        by_tag.setdefault(r["tag"], {}).setdefault(r.get("prompt", r.get("filename", "")), []).append(
            bool(r["correct"]))
    if not by_tag or resamples <= 0:
        return out
    rng = np.random.default_rng(seed)
    draws: dict[str, np.ndarray] = {}
    for tag, prompts in by_tag.items():
        hits = np.array([sum(v) for v in prompts.values()], dtype=float)          # (P,)
        counts = np.array([len(v) for v in prompts.values()], dtype=float)
        pick = rng.integers(0, len(hits), size=(resamples, len(hits)))           # (B, P)
        draws[tag] = hits[pick].sum(1) / counts[pick].sum(1)                      # (B,) tag accuracy
    draws["overall"] = _overall(benchmark, draws)
    return {**out, "ci95": {t: _interval(d) for t, d in draws.items()}}


def _overall(benchmark: str, per_tag: dict[str, np.ndarray]) -> np.ndarray:
    """The benchmark's overall rule over per-tag accuracies (arrays of resamples): WISE's
    prompt-share weighted mean for knowledge, GenEval's plain mean of tags otherwise."""
    if benchmark == "knowledge":
        w = {t: knowledge.WISE_SHARES.get(t, 0) for t in per_tag}
        tot = sum(w.values()) or 1
        return sum(per_tag[t] * w[t] for t in per_tag) / tot
    return np.mean([per_tag[t] for t in per_tag], axis=0)


def _interval(draws: np.ndarray) -> list[float]:
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


def paired_difference(benchmark: str, base: list[dict], other: list[dict], *, resamples: int = 2000,
                      seed: int = 0) -> dict:
    """``other`` minus ``base`` on the prompts both scored: per tag and overall, the difference of
    accuracies and its paired percentile-bootstrap 95% interval (the same prompts drawn for both
    runs in every resample, within each tag), and ``inside_noise``: tags whose interval holds 0.
    Pairing removes the prompts' difficulty from the noise, so it separates two runs that unpaired
    intervals would call overlapping."""
    def per_prompt(results):
        out: dict[str, dict[str, list[bool]]] = {}
        for r in results:
            out.setdefault(r["tag"], {}).setdefault(r.get("prompt", r.get("filename", "")), []).append(
                bool(r["correct"]))
        return out

    a, b = per_prompt(base), per_prompt(other)
    rng = np.random.default_rng(seed)
    point: dict[str, np.ndarray] = {}
    draws: dict[str, np.ndarray] = {}
    for tag in sorted(set(a) & set(b)):
        prompts = sorted(set(a[tag]) & set(b[tag]))
        if not prompts:
            continue
        acc = {k: (np.array([sum(r[p]) for p in prompts], float), np.array([len(r[p]) for p in prompts], float))
               for k, r in (("a", a[tag]), ("b", b[tag]))}
        pick = rng.integers(0, len(prompts), size=(resamples, len(prompts)))
        (ha, na), (hb, nb) = acc["a"], acc["b"]
        point[tag] = np.array(hb.sum() / nb.sum() - ha.sum() / na.sum())
        draws[tag] = hb[pick].sum(1) / nb[pick].sum(1) - ha[pick].sum(1) / na[pick].sum(1)
    if not draws:
        return {"diff": {}, "ci95": {}, "inside_noise": [], "prompts": 0}
    point["overall"], draws["overall"] = _overall(benchmark, point), _overall(benchmark, draws)
    ci = {t: _interval(d) for t, d in draws.items()}
    return {"diff": {t: float(v) for t, v in point.items()}, "ci95": ci,
            "inside_noise": [t for t, (lo, hi) in ci.items() if lo <= 0 <= hi],
            "prompts": sum(len(set(a[t]) & set(b[t])) for t in set(a) & set(b))}


def score_image(benchmark: str, image: np.ndarray, metadata: dict,
                detector: Detector) -> tuple[bool, str, dict]:
    """(correct, reason, details: boxes per class) for one image."""
    found = geneval.detect(image, detector, tag=metadata.get("tag"))
    details = {k: [list(map(float, b.box)) for b in v] for k, v in found.items()}
    if benchmark == "knowledge":
        ok, why = knowledge.score_image(image, metadata, detector)
    else:
        ok, why = geneval.evaluate(found, metadata)
    return ok, why, details


def _clause_problems(c, k: int, kind: str) -> list[str]:
    from ..world.scene import COLORS, RELATIONS, SHAPES

    f = f"{kind}[{k}]"
    if not isinstance(c, dict):
        return [f"{f}: must be an object with class and count"]
    out = []
    if c.get("class") not in SHAPES:
        out.append(f"{f}.class: {c.get('class')!r} is not one of {list(SHAPES)}")
    if not isinstance(c.get("count"), int) or isinstance(c.get("count"), bool) or c["count"] < 1:
        out.append(f"{f}.count: {c.get('count')!r} is not an integer >= 1")
    if kind == "include" and "color" in c and c["color"] not in COLORS:
        out.append(f"{f}.color: {c['color']!r} is not one of {list(COLORS)}")
    if kind == "include" and "position" in c:
        pos = c["position"]
        if not (isinstance(pos, list) and len(pos) == 2 and pos[0] in RELATIONS and isinstance(pos[1], int)
                and 0 <= pos[1] < k):
            out.append(f"{f}.position: {pos!r} is not [relation, index of an earlier include clause] "
                       f"(relations {list(RELATIONS)})")
    return out


def check_geneval_metadata(path: Path) -> None:
    """ValueError listing ``file:line: field: problem`` for every line of a GenEval metadata file that
    does not follow GenEval's schema: ``tag`` known, ``include`` a non-empty list of clauses with
    ``class`` and ``count`` (optional ``color``, ``position: [relation, earlier clause]``), optional
    ``exclude`` clauses. (A line without ``include`` would pass every image: a perfect score.)"""
    problems = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)                    # read_jsonl has already rejected bad JSON
        where = f"{path}:{n}"
        if row.get("tag") not in geneval.GENEVAL_TAGS:
            problems.append(f"{where}: tag: {row.get('tag')!r} is not one of {list(geneval.GENEVAL_TAGS)}")
        inc = row.get("include")
        if not isinstance(inc, list) or not inc:
            problems.append(f"{where}: include: missing or empty (a non-empty list of clauses)")
        else:
            problems += [f"{where}: {p}" for k, c in enumerate(inc)
                         for p in _clause_problems(c, k, "include")]
        exc = row.get("exclude", [])
        if not isinstance(exc, list):
            problems.append(f"{where}: exclude: must be a list of clauses")
        else:
            problems += [f"{where}: {p}" for k, c in enumerate(exc)
                         for p in _clause_problems(c, k, "exclude")]
    if problems:
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ValueError("metadata does not follow GenEval's schema:\n  " + "\n  ".join(problems[:10]) + more)


def score_dir(outdir: Path, metadata: list[dict], *, limit: int | None = None,
              detector: Detector | None = None, results_name: str = "results.jsonl",
              show_progress: bool = True, workers: int = 1) -> list[dict]:
    """Score every image under ``outdir`` and write ``<outdir>/results.jsonl`` (GenEval's fields).

    ``workers`` > 1 scores chunks of images in forked processes (the rows are the same, in order)."""
    outdir = Path(outdir)
    bench, detector = benchmark_of(metadata), detector or Detector()
    samples = list(iter_samples(outdir, metadata, limit))
    if not samples:
        raise FileNotFoundError(f"no images under {outdir} (expected <outdir>/<00000>/samples/<0000>.png)")
    bar = progress(total=len(samples), desc=f"scoring {bench}", enable=show_progress)

    def score(chunk: list) -> list[dict]:
        out = []
        for _i, meta, png in chunk:
            try:
                image = read_image(png)
            except (OSError, ValueError) as exc:        # PIL's UnidentifiedImageError is an OSError
                raise ValueError(f"{png}: not a readable image ({type(exc).__name__}: {exc})") from None
            ok, why, details = score_image(bench, image, meta, detector)
            out.append({"filename": str(png), "tag": meta["tag"], "prompt": meta["prompt"], "correct": ok,
                        "reason": why, "metadata": json.dumps(meta), "details": json.dumps(details)})
        return out

    rows = map_chunks(score, samples, workers, bar)
    write_jsonl(outdir / results_name, rows)
    missing = missing_prompts(outdir, metadata, limit)
    if missing:
        print(f"warning: {missing} prompt(s) under {outdir} have no images; scored the rest", file=sys.stderr)
    return rows


def generate_dir(generator, metadata: list[dict], outdir: Path, config, *, images_per_prompt: int = 4,
                 batch_size: int = 4, limit: int | None = None, show_progress: bool = True,
                 workers: int = 1, keep_stages: bool = False, critic=None) -> dict:
    """Generate missing images into GenEval's layout; existing images are kept (resume).

    ``config`` is a :class:`procpaint.inference.types.GenerationConfig`; image ``k`` of a batch
    whose first prompt is ``i`` uses ``seed = config.seed + 1_000_003 * k + i`` (all prompts of a
    batch share the generator's seed; batch_size=1 makes every image's seed its own).

    ``workers`` > 1 runs batches in that many forked processes, each with
    ``torch.get_num_threads() // workers`` threads (on a CPU, processes over disjoint batches use
    the cores better than threads inside each small op). Batches and seeds are the same as with one
    worker, so the images are too, up to the float rounding of a different thread count. A worker
    that dies raises here (BrokenProcessPool); samples already written stay.

    ``keep_stages`` also writes every image stage of a trajectory
    (:func:`~procpaint.evaluation.layout.stage_path`) and records its path, relative to the prompt
    folder, as ``image`` in that stage of the trajectories.jsonl record (what
    :mod:`procpaint.evaluation.diagnostics` reads); samples kept from an earlier run keep their records.
    ``critic``: an inspector other than the model (``Painter.generate(critic=...)``, e.g.
    :class:`procpaint.evaluation.oracle.OracleInspector`).
    Returns {"generated": n, "skipped": n}.
    """
    outdir = Path(outdir)
    meta = metadata[: limit] if limit is not None else metadata
    for i, m in enumerate(meta):
        write_prompt(outdir, i, m)
    write_jsonl(outdir / "evaluation_metadata.jsonl", meta)
    todo = {k: [i for i in range(len(meta)) if not sample_path(outdir, i, k).is_file()]
            for k in range(images_per_prompt)}
    n_todo = sum(map(len, todo.values()))
    stats = {"generated": 0, "skipped": images_per_prompt * len(meta) - n_todo}
    bar = progress(total=n_todo, desc=f"generating {config.mode}", enable=show_progress)
    # One k per call: the generator takes one seed per call.
    batches = [(k, idx[s: s + batch_size]) for k, idx in todo.items() for s in range(0, len(idx), batch_size)]
    workers = max(1, min(int(workers), len(batches)))
    run = lambda k, batch: _generate_batch(generator, meta, outdir, config, k, batch,  # noqa: E731
                                           keep_stages, critic)
    done = _forked(run, batches, workers) if workers > 1 else ((i, run(*b)) for i, b in enumerate(batches))
    for _, n in done:
        stats["generated"] += n
        bar.update(n)
    bar.close()
    return stats


def _generate_batch(generator, meta: list[dict], outdir: Path, config, k: int, batch: list[int],
                    keep_stages: bool = False, critic=None) -> int:
    """Generate and write one batch of prompts (sample ``k``); returns the number written."""
    cfg = replace(config, seed=config.seed + 1_000_003 * k + batch[0])
    prompts = [meta[i]["prompt"] for i in batch]
    results = (generator.generate(prompts, cfg) if critic is None
               else generator.generate(prompts, cfg, critic=critic))
    if len(results) != len(batch):
        raise RuntimeError(f"generator returned {len(results)} results for {len(batch)} prompts")
    size = next((int(r.final_image.shape[-1]) for r in results if r.final_image is not None),
                int(getattr(generator, "image_size", 0) or 32))
    for i, res in zip(batch, results):
        img = res.final_image
        if img is None:                         # nothing drawn: an empty canvas, scored as such
            img = np.full((size, size, 3), BACKGROUND, np.uint8)
        stages = [{"kind": s.kind, "text": s.text} for s in res.stages]
        if keep_stages:
            for j, (s, rec) in enumerate(zip(res.stages, stages)):
                rec["image"] = None
                if s.image is not None:
                    path = write_image(stage_path(outdir, i, k, j, s.kind), s.image)
                    rec["image"] = str(path.relative_to(prompt_dir(outdir, i)))
        append_jsonl(prompt_dir(outdir, i) / "trajectories.jsonl", {
            "sample": k, "seed": cfg.seed, "mode": res.mode, "end_reason": res.end_reason,
            "forward_passes": int(res.forward_passes), "seconds": float(res.seconds),
            "images": sum(s.image is not None for s in res.stages),
            "drew_image": res.final_image is not None, "stages": stages})
        write_image(sample_path(outdir, i, k), img)   # last: its presence marks the sample done
    return len(batch)


def map_chunks(fn: Callable[[list], list], items: list, workers: int, bar, step: int = 16) -> list:
    """``fn`` over chunks of ``step`` items, in ``workers`` forked processes when more than one
    (:func:`_forked`); the results flattened in the items' order. ``bar`` advances per finished chunk
    and is closed at the end."""
    chunks = [(items[s: s + step],) for s in range(0, len(items), step)]
    workers = max(1, min(int(workers), len(chunks)))
    parts: list[list] = [[] for _ in chunks]
    done = _forked(fn, chunks, workers) if workers > 1 else ((i, fn(*c)) for i, c in enumerate(chunks))
    for i, part in done:
        parts[i] = part
        bar.update(len(part))
    bar.close()
    return [r for part in parts for r in part]


_FORKED: Callable | None = None        # the task function forked workers inherit (never pickled)


def _forked_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _forked_call(i: int, args: tuple):
    return i, _FORKED(*args)


def _forked(fn: Callable, tasks: list[tuple], workers: int):
    """Yield (task index, fn(*task)) as tasks finish, over ``workers`` forked processes with
    ``torch.get_num_threads() // workers`` threads each. ``fn`` and what it closes over (a loaded
    generator, a detector) are inherited by the fork, not pickled; only the tasks and results
    travel. A task that raises re-raises here; a dead worker raises BrokenProcessPool (no hang)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch

    global _FORKED
    _FORKED = fn
    threads = max(1, torch.get_num_threads() // workers)
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_forked_init, initargs=(threads,)) as pool:
            futures = [pool.submit(_forked_call, i, t) for i, t in enumerate(tasks)]
            try:
                for f in as_completed(futures):
                    yield f.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        _FORKED = None


def cost_summary(outdir: Path, n_prompts: int) -> dict:
    """Mean forward passes, seconds and images per generated trajectory (from trajectories.jsonl)."""
    rows = [r for i in range(n_prompts) for r in read_costs(outdir, i).values()]
    if not rows:
        return {}
    return {"trajectories": len(rows),
            "forward_passes": float(np.mean([r["forward_passes"] for r in rows])),
            "seconds": float(np.mean([r["seconds"] for r in rows])),
            "images": float(np.mean([r["images"] for r in rows])),
            "no_image": int(sum(not r.get("drew_image", True) for r in rows))}
