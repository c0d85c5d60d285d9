"""GenEval-rule evaluation of a model held in memory, and its contact sheet.

One home for what ``train/fit.py``'s closing eval, the TensorBoard trajectory prompts, the recipe
probes (benchmarks/probe_recipe.py), the sanity ladder (train/ladder.py) and the README picture all
do: draw held-out GenEval prompts spread evenly over the six tags, generate (process, single-pass
or planner mode), and score each final image with GenEval's rules on the world's detector --
exactly what ``train/evaluate.py --benchmark geneval`` does from files, without the files.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from procpaint.evaluation import geneval
from procpaint.io import to_uint8, write_image

__all__ = ["contact_sheet", "evaluate_model", "exact_verdict", "format_summary", "quick_eval",
           "stratified_metadata"]


def stratified_metadata(n: int, seed: int = 0, tags=geneval.GENEVAL_TAGS) -> list[dict]:
    """``n`` held-out GenEval prompts spread evenly over ``tags`` (the first tags take the remainder)."""
    counts = {t: n // len(tags) + (k < n % len(tags)) for k, t in enumerate(tags)}
    return geneval.generate_metadata(counts, seed=seed)


def score_results(results, metas: list[dict], detector=None) -> list[bool]:
    """GenEval verdict of each result's final image (False when it drew none), exactly as
    ``train/evaluate.py`` scores a file (:func:`procpaint.evaluation.runner.score_image`)."""
    from procpaint.evaluation.runner import score_image
    from procpaint.world import Detector

    detector = detector or Detector()
    return [r.final_image is not None and score_image("geneval", to_uint8(r.final_image), m, detector)[0]
            for r, m in zip(results, metas)]


@torch.no_grad()
def evaluate_model(model, tokenizer, metas: list[dict], config, *, image_size: int,
                   batch_size: int = 8) -> tuple[dict, list, list[bool]]:
    """Generate every prompt of ``metas`` with ``config`` (a GenerationConfig) and score it.

    -> (GenEval summary: per-tag accuracy, ``overall`` and ``images``; the TrajectoryResults; the
    verdicts). The model is put in eval mode and given back in the mode it was in.
    """
    from procpaint.inference import Painter

    was_training = model.training
    try:
        gen = Painter(model, tokenizer, image_size=image_size)
        results = []
        for s in range(0, len(metas), batch_size):
            results += gen.generate([m["prompt"] for m in metas[s: s + batch_size]], config)
    finally:
        model.train(was_training)
    verdicts = score_results(results, metas)
    rows = [{"tag": m["tag"], "correct": ok} for m, ok in zip(metas, verdicts)]
    return geneval.summarize(rows), results, verdicts


def quick_eval(model, tokenizer, *, image_size: int, config, n: int = 48, seed: int = 0,
               sheet: str | Path | None = None) -> dict:
    """GenEval-rule accuracy on ``n`` held-out prompts spread over the six tags (the closing eval of
    ``train/fit.py``) with ``config`` (a GenerationConfig); ``sheet``: also write their contact sheet
    there (PNG). -> the summary, prompt counts, share that drew an image, forward passes, sampling."""
    metas = stratified_metadata(n, seed=seed)
    summary, results, verdicts = evaluate_model(model, tokenizer, metas, replace(config, seed=seed),
                                                image_size=image_size)
    if sheet is not None:
        contact_sheet(results, verdicts, sheet)
    return {"geneval": summary, "prompts": len(metas), "distinct_prompts": len({m["prompt"] for m in metas}),
            "drew_image": float(np.mean([r.final_image is not None for r in results])),
            "forward_passes": float(np.mean([r.forward_passes for r in results])),
            "sampling": {"mode": config.mode, "num_steps": config.num_steps,
                         "cfg_text_scale": config.cfg_text_scale, "cfg_image_scale": config.cfg_image_scale}}


def exact_verdict(result, detector=None) -> bool:
    """Whether a TrajectoryResult's final image shows exactly its prompt's scene (the detected scene
    satisfies the prompt's scene graph; False when it drew none): the TensorBoard strips' verdict."""
    from procpaint.world import Detector, parse_prompt, satisfies

    if result.final_image is None:
        return False
    detector = detector or Detector()
    return satisfies(detector.state(to_uint8(result.final_image)), parse_prompt(result.prompt))


def format_summary(summary: dict) -> str:
    """A one-table markdown rendering: tag | accuracy | images, then overall."""
    lines = ["| tag | accuracy | images |", "|---|---:|---:|"]
    for t in geneval.GENEVAL_TAGS:
        if t in summary:
            lines.append(f"| {t} | {summary[t]:.3f} | {summary['images'][t]} |")
    lines.append(f"| **overall** | **{summary['overall']:.3f}** | {sum(summary['images'].values())} |")
    return "\n".join(lines)


def _wrap(text: str, width: int, max_lines: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(0, width - 3)] + "..."
    return lines


def contact_sheet(results, verdicts: list[bool], path, *, cols: int = 6, cell: int = 128,
                  captions: bool = True) -> None:
    """One cell per trajectory: its images left to right (draft, refined, ...), a green (right) /
    red (wrong) bar, then the prompt and the plan and refine texts; written as a PNG to ``path``."""
    from PIL import Image, ImageDraw

    per = max([len([s for s in r.stages if s.image is not None]) for r in results] + [1])
    w = cell * per
    chars = max(12, (w - 4) // 6)                      # PIL's default bitmap font: ~6 px a character
    texts = []
    for r in results:
        lines = _wrap(r.prompt, chars, 2) if captions else []
        for s in r.stages if captions else []:
            if s.kind in ("plan", "refine") and s.text:
                lines += _wrap(f"{s.kind}: {s.text}", chars, 2)
        texts.append(lines)
    text_h = 11 * max([len(t) for t in texts] + [0]) + 4
    rows = (len(results) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (w + 8), rows * (cell + text_h + 8)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (r, ok, lines) in enumerate(zip(results, verdicts, texts)):
        x, y = (k % cols) * (w + 8) + 4, (k // cols) * (cell + text_h + 8) + 2
        images = [s.image for s in r.stages if s.image is not None]
        for j, img in enumerate(images):
            tile = Image.fromarray(to_uint8(img)).resize((cell - 4, cell - 4), Image.NEAREST)
            sheet.paste(tile, (x + j * cell, y))
        draw.rectangle([x, y + cell - 2, x + max(len(images), 1) * cell - 4, y + cell + 1],
                       fill=(40, 170, 60) if ok else (210, 40, 40))
        if lines:
            draw.text((x, y + cell + 4), "\n".join(lines), fill=(0, 0, 0), spacing=1)
    write_image(path, sheet)
