"""Short training probes: build data of chosen tags, train, score held-out prompts, draw a sheet.

One probe = one row of the recipe-ablation table (benchmarks/results/*-recipe-cpu.md): everything is
the default run's except the ``key=value`` overrides given, and the score is GenEval's rules with the
world's detector on held-out prompts, so rows compare like for like.

    python benchmarks/probe_recipe.py --name base --tags single_object --steps 400 \\
        data.image_size=64 model.patch_size=8 [key=value ...] [--out-json probes.jsonl]

Data building and the fit are the sanity ladder's (procpaint/training/ladder.py); scoring is
procpaint.evaluation.quick's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def score(model, tokenizer, image_size: int, tags: list[str], per_tag: int, mode: str, num_steps: int = 20,
          seed: int = 0, gen_overrides: dict | None = None):
    """GenEval-rule verdicts on ``per_tag`` held-out prompts of each tag -> (summary, results, verdicts)."""
    from procpaint.evaluation import geneval
    from procpaint.evaluation.quick import evaluate_model
    from procpaint.inference import GenerationConfig

    metas = geneval.generate_metadata({t: per_tag for t in tags if t in geneval.GENEVAL_TAGS}, seed=seed)
    cfg = GenerationConfig(mode=mode, num_steps=num_steps, seed=seed, **(gen_overrides or {}))
    return evaluate_model(model, tokenizer, metas, cfg, image_size=image_size)


def probe(name: str, tags: list[str], overrides: list[str], *, steps: int, samples: int, out: Path,
          eval_per_tag: int = 24, eval_tags: list[str] | None = None, mode: str | None = None,
          data_knobs: dict | None = None, num_steps: int = 20, gen_overrides: dict | None = None) -> dict:
    from procpaint.config import load_config
    from procpaint.evaluation.quick import contact_sheet
    from procpaint.inference import load_generator
    from procpaint.training.ladder import build_probe_data, fit_probe

    image_size = load_config(ROOT / "train/configs/default.yaml", overrides).data.image_size
    t0 = time.perf_counter()
    root = build_probe_data(out / "data", tags, samples, image_size, **(data_knobs or {}))
    t_data = time.perf_counter() - t0
    res, cfg, t_fit = fit_probe(root, overrides, steps=steps, out=out / "runs", name=name)
    gen = load_generator(Path(res.log_dir) / "export")
    mode = mode or ("single-pass" if cfg.data.trajectory == "final_only" else "process")
    t2 = time.perf_counter()
    summary, results, verdicts = score(gen.model, gen.tok, image_size, eval_tags or tags, eval_per_tag, mode,
                                       num_steps=num_steps, gen_overrides=gen_overrides)
    t_eval = time.perf_counter() - t2
    contact_sheet(results, verdicts, Path(res.log_dir) / "sheet.png")
    return {"name": name, "tags": tags, "overrides": overrides, "steps": steps, "samples": samples,
            "mode": mode, "summary": summary, "data_s": round(t_data, 1), "fit_s": round(t_fit, 1),
            "eval_s": round(t_eval, 1), "load": os.getloadavg()[0], "log_dir": res.log_dir,
            "sheet": str(Path(res.log_dir) / "sheet.png")}


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
    ap.add_argument("--export", default=None, help="score this export instead of training (sampling probes)")
    ap.add_argument("--gen", action="append", default=[], metavar="KEY=VALUE",
                    help="GenerationConfig field for scoring, e.g. cfg_text_scale=3 (float values)")
    ap.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                    help="procedural-data knob (procpaint.datasets.BuildConfig), e.g. layout=canonical")
    ap.add_argument("--out", default="probes")
    ap.add_argument("--out-json", default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    gen_overrides = {k: (v if k in ("cfg_renorm", "mode") else float(v) if "." in v or "e" in v else int(v))
                     for k, v in (kv.split("=", 1) for kv in args.gen)}
    if args.export:
        from procpaint.inference import load_generator

        t0 = time.perf_counter()
        gen = load_generator(args.export)
        summary, results, verdicts = score(gen.model, gen.tok, gen.image_size, args.eval_tags.split(",")
                                           if args.eval_tags else args.tags.split(","), args.per_tag,
                                           args.mode or "single-pass", num_steps=args.num_steps,
                                           gen_overrides=gen_overrides)
        row = {"name": args.name, "export": args.export, "gen": args.gen, "summary": summary,
               "eval_s": round(time.perf_counter() - t0, 1), "load": os.getloadavg()[0]}
        print(json.dumps(row))
        if args.out_json:
            with open(args.out_json, "a") as f:
                f.write(json.dumps(row) + "\n")
        return 0
    row = probe(args.name, args.tags.split(","), args.overrides, steps=args.steps, samples=args.samples,
                out=Path(args.out), eval_per_tag=args.per_tag,
                eval_tags=args.eval_tags.split(",") if args.eval_tags else None, mode=args.mode,
                num_steps=args.num_steps, data_knobs=dict(kv.split("=", 1) for kv in args.data),
                gen_overrides=gen_overrides)
    row["data"] = args.data
    print(json.dumps(row))
    if args.out_json:
        with open(args.out_json, "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
