"""Short training probes: build data of chosen tags, train, score held-out prompts, draw a sheet.

One probe = one row of the recipe-ablation table (benchmarks/results/*-recipe-cpu.md): everything is
the default run's except the ``key=value`` overrides given, and the score is GenEval's rules with the
world's detector on held-out prompts, so rows compare like for like.

    python benchmarks/probe_recipe.py --name base --tags single_object --steps 400 \\
        data.image_size=64 model.patch_size=8 [key=value ...] [--out-json probes.jsonl]

Also the sanity ladder (train/ladder.py) runs its rungs through :func:`probe`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_data(out: Path, tags: list[str], samples: int, image_size: int, seed: int = 0,
               subsets=("multiturn",), **knobs) -> Path:
    """A procedural dataset of ``tags`` only (cached by its arguments under ``out``)."""
    from procpaint.datasets import DataConfig, build_dataset
    from procpaint.world.prompts import TAGS

    weights = {t: (1.0 if t in tags else 0.0) for t in TAGS}
    key = f"{'-'.join(sorted(tags))}-n{samples}-px{image_size}-s{seed}-" + "-".join(
        f"{k}{v}" for k, v in sorted(knobs.items()))
    root = out / key
    if (root / "manifest.json").is_file():
        return root
    sizes = {s: (samples if s in subsets else 0) for s in ("multiturn", "conflict", "alignment")}
    cfg = DataConfig(seed=seed, image_size=image_size, tag_weights=weights, shard_size=max(8, samples // 4),
                     **sizes, **knobs)
    build_dataset(root, subsets=tuple(subsets), cfg=cfg, workers=1, progress=False)
    return root


def contact_sheet(results, verdicts, path: Path, cols: int = 8, cell: int = 96) -> None:
    """Final images in a grid, a green/red bar under each for the GenEval verdict."""
    from PIL import Image, ImageDraw

    from procpaint.inference.render import to_uint8

    rows = (len(results) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell, rows * (cell + 6)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (r, ok) in enumerate(zip(results, verdicts)):
        x, y = (k % cols) * cell, (k // cols) * (cell + 6)
        if r.final_image is not None:
            img = Image.fromarray(to_uint8(r.final_image)).resize((cell - 4, cell - 4), Image.NEAREST)
            sheet.paste(img, (x + 2, y + 2))
        draw.rectangle([x + 2, y + cell, x + cell - 2, y + cell + 4], fill=(40, 170, 60) if ok else (210, 40, 40))
    sheet.save(path)


def score(module_or_model, tokenizer, image_size: int, tags: list[str], per_tag: int, mode: str,
          num_steps: int = 20, seed: int = 0, gen_overrides: dict | None = None):
    """GenEval-rule verdicts on ``per_tag`` held-out prompts of each tag -> (summary, results, metas)."""
    from procpaint.evaluation import geneval
    from procpaint.inference import GenerationConfig, Generator
    from procpaint.inference.render import to_uint8
    from procpaint.world import Detector

    model = getattr(module_or_model, "model", module_or_model)
    metas = geneval.generate_metadata({t: per_tag for t in tags if t in geneval.GENEVAL_TAGS}, seed=seed)
    gen = Generator(model, tokenizer, image_size=image_size)
    cfg = GenerationConfig(mode=mode, num_steps=num_steps, seed=seed, **(gen_overrides or {}))
    results = []
    for s in range(0, len(metas), 8):
        from dataclasses import replace
        results += gen.generate([m["prompt"] for m in metas[s: s + 8]], replace(cfg, seed=seed + s))
    det, rows = Detector(), []
    for m, r in zip(metas, results):
        img = r.final_image
        ok = False if img is None else geneval.evaluate(geneval.detect(to_uint8(img), det), m)[0]
        rows.append({"tag": m["tag"], "correct": ok})
    model.train()
    return geneval.summarize(rows), results, [r["correct"] for r in rows]


def probe(name: str, tags: list[str], overrides: list[str], *, steps: int, samples: int, out: Path,
          eval_per_tag: int = 24, eval_tags: list[str] | None = None, mode: str | None = None,
          data_knobs: dict | None = None, num_steps: int = 20, gen_overrides: dict | None = None) -> dict:
    from procpaint.config import load_config
    from procpaint.training.run import fit

    cfg0 = load_config(ROOT / "train/configs/default.yaml", overrides)
    image_size = cfg0.data.image_size
    t0 = time.perf_counter()
    root = build_data(out / "data", tags, samples, image_size, **(data_knobs or {}))
    t_data = time.perf_counter() - t0
    cfg = load_config(ROOT / "train/configs/default.yaml", [
        f"data.root={root}", f"trainer.max_steps={steps}", f"trainer.default_root_dir={out / 'runs'}",
        f"logging.name={name}", "logging.final_eval_prompts=0", "logging.trajectory_every_n_steps=0",
        "trainer.enable_progress_bar=false", f"logging.checkpoint_every_n_steps={max(steps, 1)}",
        "trainer.val_check_interval=null", *overrides])
    t1 = time.perf_counter()
    res = fit(cfg)
    t_fit = time.perf_counter() - t1
    from procpaint.inference import load_generator
    gen = load_generator(Path(res.log_dir) / "export")
    mode = mode or ("single-pass" if cfg.data.trajectory == "final_only" else "process")
    t2 = time.perf_counter()
    summary, results, verdicts = score(gen.model, gen.tok, image_size, eval_tags or tags, eval_per_tag, mode,
                                       num_steps=num_steps, gen_overrides=gen_overrides)
    t_eval = time.perf_counter() - t2
    contact_sheet(results, verdicts, Path(res.log_dir) / "sheet.png")
    row = {"name": name, "tags": tags, "overrides": overrides, "steps": steps, "samples": samples,
           "mode": mode, "summary": summary, "data_s": round(t_data, 1), "fit_s": round(t_fit, 1),
           "eval_s": round(t_eval, 1), "load": os.getloadavg()[0], "log_dir": res.log_dir,
           "sheet": str(Path(res.log_dir) / "sheet.png")}
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--tags", default="single_object", help="comma-separated world tags to train on")
    ap.add_argument("--eval-tags", default=None, help="GenEval tags to score (default: --tags)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--per-tag", type=int, default=24)
    ap.add_argument("--num-steps", type=int, default=20, help="flow steps at sampling")
    ap.add_argument("--mode", default=None)
    ap.add_argument("--out", default="probes")
    ap.add_argument("--out-json", default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    row = probe(args.name, args.tags.split(","), args.overrides, steps=args.steps, samples=args.samples,
                out=Path(args.out), eval_per_tag=args.per_tag,
                eval_tags=args.eval_tags.split(",") if args.eval_tags else None, mode=args.mode,
                num_steps=args.num_steps)
    print(json.dumps(row))
    if args.out_json:
        with open(args.out_json, "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
