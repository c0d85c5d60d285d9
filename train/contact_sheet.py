"""A contact sheet of a checkpoint's held-out GenEval samples: the picture in the README.

    python train/contact_sheet.py --ckpt runs/default/version_0/export --out docs/default_samples.png

Draws ``--per-tag`` held-out prompts of each of GenEval's six tags, generates them (``--mode``, the
checkpoint's own sampling settings unless flags say otherwise), judges each with GenEval's rules and
writes one PNG: per prompt its draft and refined images, a green/red verdict bar, the prompt and the
plan/refine texts. Prints the GenEval-rule table of those prompts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from procpaint.inference.options import add_sampling_args

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="Lightning .ckpt file or export directory")
    ap.add_argument("--out", default="docs/default_samples.png", help="PNG to write")
    ap.add_argument("--per-tag", type=int, default=3, help="held-out prompts of each GenEval tag")
    ap.add_argument("--mode", default="process", choices=("process", "single-pass", "planner"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cols", type=int, default=6)
    add_sampling_args(ap)
    args = ap.parse_args(argv)
    from procpaint.evaluation import geneval
    from procpaint.evaluation.quick import contact_sheet, evaluate_model, format_summary, stratified_metadata
    from procpaint.inference import CheckpointError, load_generator
    from procpaint.inference.options import generation_config

    try:
        if args.per_tag < 1:
            raise ValueError(f"--per-tag must be >= 1, got {args.per_tag}")
        gen = load_generator(args.ckpt)
        cfg = generation_config(args, gen.sampling, mode=args.mode, seed=args.seed)
    except (CheckpointError, ValueError) as exc:
        print(f"contact_sheet.py: error: {exc}", file=sys.stderr)
        return 2
    metas = stratified_metadata(args.per_tag * len(geneval.GENEVAL_TAGS), seed=args.seed)
    metas.sort(key=lambda m: geneval.GENEVAL_TAGS.index(m["tag"]))
    summary, results, verdicts = evaluate_model(gen.model, gen.tok, metas, cfg, image_size=gen.image_size)
    out = Path(args.out)
    contact_sheet(results, verdicts, out, cols=args.cols)    # temporary name, then rename
    print(format_summary(summary))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
