"""Build, resume or validate a procpaint dataset directory.

    python data/build.py {multiturn,conflict,alignment,all} --out DIR [--preset default|paper|tiny]
                         [--samples N] [--seed S] [--image-size PX] [--workers K] [--overwrite]
                         [--checkpoint CKPT [--device cpu|cuda]]
    python data/build.py validate DIR

``--checkpoint`` (a multi-turn .ckpt or export directory) builds the conflict subset from the model's
own sampled plans (self-sampling, the paper's main variant) instead of perturbed scene-graph plans.
A re-run with the same settings resumes; a subset of DIR built with other settings is kept and the
build refuses (exit 2) unless ``--overwrite``. The format is documented in data/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

from procpaint.datasets import SUBSETS, build_dataset, preset, validate, with_samples


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=[*SUBSETS, "all", "validate"])
    ap.add_argument("dir", nargs="?", help="dataset directory (validate)")
    ap.add_argument("--out", help="output directory (build)")
    ap.add_argument("--preset", default="default", help="size preset: default, paper or tiny")
    ap.add_argument("--samples", type=int, help="samples per selected subset (overrides the preset)")
    ap.add_argument("--seed", type=int, help="base seed (same seed -> byte-identical output)")
    ap.add_argument("--image-size", type=int, help="image side in pixels (default 32)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes")
    ap.add_argument("--checkpoint", help="multi-turn .ckpt or export dir: self-sampled conflict data")
    ap.add_argument("--device", default="cpu", help="device that samples plans with --checkpoint (cpu, cuda)")
    ap.add_argument("--verify-images", type=float, help="share of images re-checked by the detector")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace subsets of --out that were built with other settings")
    args = ap.parse_args(argv)

    if args.command == "validate":
        if not args.dir:
            ap.error("validate needs the dataset directory: data/build.py validate DIR")
        problems = validate(args.dir)
        for p in problems:
            print(p)
        print(f"{len(problems)} problem(s) in {args.dir}", file=sys.stderr)
        return 1 if problems else 0
    if not args.out:
        ap.error("building needs --out DIR")
    subsets = SUBSETS if args.command == "all" else (args.command,)
    over = {k: v for k, v in (("seed", args.seed), ("image_size", args.image_size),
                              ("verify_images", args.verify_images)) if v is not None}
    try:
        cfg = replace(preset(args.preset), **over)
        if args.samples is not None:
            cfg = with_samples(cfg, subsets, args.samples)
        t0 = time.perf_counter()
        man = build_dataset(args.out, subsets, cfg, workers=args.workers, progress=not args.quiet,
                            checkpoint=args.checkpoint, device=args.device, overwrite=args.overwrite)
    except (NotImplementedError, ValueError, KeyError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t0
    for sub in subsets:
        s = man["subsets"][sub]
        print(f"{sub}: {s['samples']} samples, {s['images']} images "
              f"(avg {s['images_per_sample']['avg']}, max {s['images_per_sample']['max']}), "
              f"positive {s['positive']}, negative {s['negative']}")
        if "self_sampled" in s:
            ss = s["self_sampled"]
            print(f"  self-sampled: {ss['plans']} plans from {ss['trajectories']} trajectories, "
                  f"{ss['parse_failures']} unparseable, natural positive share "
                  f"{ss['natural_positive_share']}, "
                  f"{ss['off_ratio']} off-ratio, {ss['unfilled']} unfilled")
    print(f"built {args.out} in {dt:.1f} s with {args.workers} worker(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
