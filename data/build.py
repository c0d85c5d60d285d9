"""Build, resume or validate a procpaint dataset directory.

    python data/build.py {multiturn,conflict,alignment,all} --out DIR [--preset default|paper|tiny]
                         [--samples N] [--seed S] [--image-size PX] [--workers K] [--overwrite]
                         [--checkpoint CKPT [--device cpu|cuda]]
    python data/build.py validate DIR
    python data/build.py import SRC OUT [--bucket MAX,MIN,STRIDE[,MAX_PIXELS]] [--vit-bucket ...]
                         [--tokenizer tokenizer.json] [--on-error error|skip] [--image-format png|jpeg]
                         [--workers K] [--overwrite]

``--checkpoint`` (a multi-turn .ckpt or export directory) builds the conflict subset from the model's
own sampled plans (self-sampling, the paper's main variant) instead of perturbed scene-graph plans.
A re-run with the same settings resumes; a subset of DIR built with other settings is kept and the
build refuses (exit 2) unless ``--overwrite``. The format is documented in data/README.md.

``import`` turns a folder of your own trajectories (real images of any size + plan / critique / refine
texts; layout in data/README.md, "Import your own trajectories") into that format: images resized by
BAGEL's bucketing rule, validated, written to a temporary directory renamed to OUT at the end. Bad
records are listed as ``file:line: field: problem`` (exit 2, nothing written), or left out with
``--on-error skip``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import replace

from procpaint.datasets import SUBSETS, build_dataset, preset, validate, with_samples


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=[*SUBSETS, "all", "validate", "import"])
    ap.add_argument("paths", nargs="*", metavar="DIR", help="validate: DIR; import: SRC OUT")
    ap.add_argument("--out", help="output directory (build)")
    ap.add_argument("--preset", default="default", help="size preset: default, paper or tiny")
    ap.add_argument("--samples", type=int, help="samples per selected subset (overrides the preset)")
    ap.add_argument("--seed", type=int, help="base seed (same seed -> byte-identical output)")
    ap.add_argument("--image-size", type=int, help="image side in pixels (default 32)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes")
    ap.add_argument("--checkpoint", help="multi-turn .ckpt or export dir: self-sampled conflict data")
    ap.add_argument("--device", default="cpu", help="device that samples plans with --checkpoint (cpu, cuda)")
    ap.add_argument("--verify-images", type=float, help="share of images re-checked by the detector")
    ap.add_argument("--fact-share", type=float,
                    help="share of multi-turn records that are fact-corpus text (default 0.1; 0: none)")
    ap.add_argument("--knowledge-share", type=float,
                    help="share of multi-turn records whose prompt names a trained fact (default 0.1)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace subsets of --out that were built with other settings (import: replace OUT)")
    imp = ap.add_argument_group("import")
    imp.add_argument("--bucket", default="1024,512,16",
                     help="stored image size rule MAX_SIDE,MIN_SIDE,STRIDE[,MAX_PIXELS] "
                          "(BAGEL's VAE: 1024,512,16)")
    imp.add_argument("--vit-bucket", default="980,224,14",
                     help="ViT image size rule, recorded in the manifest (BAGEL's SigLIP: 980,224,14)")
    imp.add_argument("--tokenizer",
                     help="tokenizer.json to use (default: a WordLevel over the imported words)")
    imp.add_argument("--on-error", default="error", choices=["error", "skip"],
                     help="bad records: error (list them all, write nothing) or skip (leave them out)")
    imp.add_argument("--shard-size", type=int, default=1000, help="records per JSONL shard")
    imp.add_argument("--image-format", default="png", choices=["png", "jpeg"],
                     help="stored images: png (lossless) or jpeg (quality 95, ~4x smaller)")
    args = ap.parse_args(argv)

    if args.command == "validate":
        if len(args.paths) != 1:
            ap.error("validate needs the dataset directory: data/build.py validate DIR")
        problems = validate(args.paths[0])
        for p in problems:
            print(p)
        print(f"{len(problems)} problem(s) in {args.paths[0]}", file=sys.stderr)
        return 1 if problems else 0
    if args.command == "import":
        return _import(ap, args)
    if args.paths:
        ap.error(f"{args.command} takes no positional DIR; use --out DIR")
    if not args.out:
        ap.error("building needs --out DIR")
    subsets = SUBSETS if args.command == "all" else (args.command,)
    over = {k: v for k, v in (("seed", args.seed), ("image_size", args.image_size),
                              ("verify_images", args.verify_images), ("fact_share", args.fact_share),
                              ("knowledge_share", args.knowledge_share)) if v is not None}
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
              f"positive {s['positive']}, negative {s['negative']}"
              + (f", {s['tags']['fact']} fact-corpus records" if s["tags"].get("fact") else "")
              + (f", {s['tags']['knowledge']} knowledge prompts" if s["tags"].get("knowledge") else ""))
        if "self_sampled" in s:
            ss = s["self_sampled"]
            print(f"  self-sampled: {ss['plans']} plans from {ss['trajectories']} trajectories, "
                  f"{ss['parse_failures']} unparseable, natural positive share "
                  f"{ss['natural_positive_share']}, "
                  f"{ss['off_ratio']} off-ratio, {ss['unfilled']} unfilled")
    print(f"built {args.out} in {dt:.1f} s with {args.workers} worker(s)")
    return 0


def _import(ap, args) -> int:
    from procpaint.datasets.buckets import ImageBucket
    from procpaint.datasets.importer import ImportProblems, import_trajectories

    paths = args.paths + ([args.out] if args.out else [])
    if len(paths) != 2:
        ap.error("import needs the source folder and the output directory: data/build.py import SRC OUT")
    src, out = paths
    # SIGTERM unwinds like Ctrl-C, so the temporary directory is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.perf_counter()
    try:
        bucket, vit = ImageBucket.parse(args.bucket), ImageBucket.parse(args.vit_bucket)
        man = import_trajectories(src, out, bucket=bucket, vit_bucket=vit, tokenizer=args.tokenizer,
                                  on_error=args.on_error, shard_size=args.shard_size,
                                  overwrite=args.overwrite, image_format=args.image_format,
                                  workers=args.workers)
    except ImportProblems as e:
        for p in e.problems:
            print(p)
        print(f"{len(e.problems)} problem(s) in {src}; nothing written to {out}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info, sub = man["imported"], man["subsets"]["multiturn"]
    for p in info["problems"]:
        print(f"skipped: {p}")
    print(f"imported {sub['samples']} trajectories ({info['skipped']} skipped), {sub['images']} images "
          f"(sizes {sub['image_sizes']}) into {out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
