"""Benchmark: the judge's robustness on degraded renders of known scenes, its confidence, its speed.

    python benchmarks/bench_judge.py [--sizes 64,32] [--n 50] [--seed 0] [--out FILE.md]

For every image size and degradation (procpaint.world.degrade: clean, 2x/4x bilinear down/up
sampling, Gaussian blur 0.5/1.0/1.5 px, noise 10/255, colour shift +-12, soft edge), ``n`` held-out
GenEval prompts per tag are realised and rendered (procpaint.evaluation.robustness): the right
scene must be accepted, planted errors (shape, colour, one extra / one missing object, swapped
relation) rejected -- each counted only where the judge's own rule rejects the known scene. Two
judges read the same images: GenEval's rules (``geneval.detect`` + ``evaluate``, threshold 0.3,
0.9 for counting) and the exact judge (``Detector.state`` + ``satisfies``). Targets: >= 95%
accept and >= 95% reject for every tag and degradation, 100% on clean renders.

Baseline inside: the same detector with Gaussian blur candidates only (``--ablation``), i.e.
without the resampling kernels. Confidence: its distribution on true objects per degradation and on
things that are not objects (a Gaussian blob, a 4-pixel smudge, a half-covered shape). Speed: ms
per image, best of 3, clean and 2x-resampled renders.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import numpy as np
import torch

from procpaint.evaluation import geneval
from procpaint.evaluation import robustness as R
from procpaint.world import Detector, Renderer
from procpaint.world.degrade import DEGRADATIONS, degrade
from procpaint.world.detect import KERNELS

TAGS = geneval.GENEVAL_TAGS
SHORT = {"single_object": "single", "two_object": "two", "counting": "count", "colors": "colors",
         "position": "pos", "color_attr": "attr"}


def pct(kn) -> str:
    k, n = kn
    return f"{100 * k / n:.0f}" if n else "-"


def ok(kn, target=0.95) -> bool:
    return kn[1] == 0 or kn[0] / kn[1] >= target


def robustness(size: int, n: int, seed: int, det: Detector, degs) -> tuple[list[str], list[str]]:
    """-> (table lines, lines naming every (degradation, tag) below target)."""
    r = Renderer(size)
    cases = {t: R.cases(t, n, seed=seed) for t in TAGS}
    head = "| degradation | " + " | ".join(f"{SHORT[t]} G acc/rej" for t in TAGS) + " | " \
        + " | ".join(f"{SHORT[t]} E acc/rej" for t in TAGS) + " | all met |"
    lines = [head, "|" + "---|" * (2 * len(TAGS) + 2)]
    misses = []
    for d in degs:
        cells = {"geneval": [], "exact": []}
        met = True
        for t in TAGS:
            o = R.rates(cases[t], r, d, det)
            for j in ("geneval", "exact"):
                a, rej = o[j]["accept"], o[j]["reject"]
                target = 1.0 if d == "clean" else 0.95
                good = ok(a, target) and ok(rej, target)
                met &= good
                cells[j].append(f"{pct(a)}/{pct(rej)}" + ("" if good else " *"))
                if not good:
                    kinds = ", ".join(f"{k} {pct(v)}" for k, v in o[j]["by_kind"].items())
                    misses.append(f"- {size} px, {d}, {t}, {j}: accept {pct(a)}% (n={a[1]}), "
                                  f"reject {pct(rej)}% (n={rej[1]}; {kinds})")
        lines.append(f"| {d} | " + " | ".join(cells["geneval"]) + " | " + " | ".join(cells["exact"])
                     + f" | {'yes' if met else 'no'} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return lines, misses


def quantiles(v) -> str:
    v = np.asarray(v)
    if not len(v):
        return "(nothing detected) | - | - | -"
    above, counted = np.mean(v > geneval.THRESHOLD), np.mean(v > geneval.COUNTING_THRESHOLD)
    return (f"{np.percentile(v, 5):.2f} / {np.median(v):.2f} | {v.min():.2f} | "
            f"{100 * above:.0f}% | {100 * counted:.0f}%")


def confidences(size: int, n: int, seed: int, det: Detector) -> list[str]:
    r = Renderer(size)
    cases = [c for t in TAGS for c in R.cases(t, n, seed=seed + 1)]
    lines = ["| what | detections | p5 / median | min | > 0.3 | > 0.9 |", "|---|---|---|---|---|---|"]
    for d in DEGRADATIONS:
        imgs = [degrade(r.paint(c.state, c.seed), d, c.seed) for c in cases]
        conf = [x.confidence for im in imgs for x in det.detect(im)]
        lines.append(f"| true objects, {d} | {len(conf)} | {quantiles(conf)} |")
    for kind in R.NEGATIVE_KINDS:
        for d in ("clean", "down2", "down4"):
            conf = [x.confidence for s in range(n * 2)
                    for x in det.detect(degrade(R.negative(kind, size, 1000 * seed + s), d, s))]
            lines.append(f"| not an object: {kind}, {d} | {len(conf)} | {quantiles(conf)} |")
    return lines


def speed(size: int, det: Detector) -> str:
    r = Renderer(size)
    cases = [c for t in ("two_object", "counting", "position") for c in R.cases(t, 10, seed=2)]
    out = []
    for d in ("clean", "down2"):
        imgs = [degrade(r.paint(c.state, c.seed), d, c.seed) for c in cases]
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for im in imgs:
                det.detect(im)
            best = min(best, (time.perf_counter() - t0) / len(imgs))
        out.append(f"{best * 1e3:.2f}")
    return f"| {size} | {out[0]} ms | {out[1]} ms |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,32", help="image sizes, comma-separated; first is the headline")
    ap.add_argument("--n", type=int, default=50, help="prompts per tag")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--degradations", default=",".join(DEGRADATIONS))
    ap.add_argument("--ablation", action="store_true", help="also: Gaussian-only blur kernels, down2/4")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")]
    degs = args.degradations.split(",")
    det = Detector()
    md = ["# Judge robustness on degraded renders of known scenes (cpu)", "",
          f"- date: {datetime.date.today()}", f"- machine: 2-core CPU ({platform.machine()}), "
          f"load average {os.getloadavg()[0]:.1f} at the start (shared with training jobs)",
          f"- torch {torch.__version__}, numpy {np.__version__}, Python {platform.python_version()}",
          f"- command: `python {' '.join(sys.argv)}`",
          f"- {args.n} held-out prompts per tag and size, seed {args.seed}; G = GenEval rules "
          "(threshold 0.3, counting 0.9, 16 per class), E = exact judge; cells: accept % of right "
          "scenes / reject % of planted errors; * = below target (100% clean, 95% degraded)", ""]
    all_misses = []
    for size in sizes:
        lines, misses = robustness(size, args.n, args.seed, det, degs)
        md += [f"## {size} px", ""] + lines + [""]
        all_misses += misses
    if args.ablation:
        gauss = Detector(kernels=tuple(k for k in KERNELS if k[0] == "gauss"))
        for size in sizes:
            lines, _ = robustness(size, args.n, args.seed, gauss, ["down2", "down4"])
            md += [f"## Ablation: Gaussian blur candidates only, {size} px", ""] + lines + [""]
    md += ["## Below target", ""] + (all_misses or ["- none"]) + [""]
    md += [f"## Confidence calibration ({sizes[0]} px)", "",
           "True objects must clear 0.9 (GenEval's counting threshold); things that are not objects "
           "should stay below 0.3.", ""] + confidences(sizes[0], max(args.n // 5, 4), args.seed, det) + [""]
    md += ["## Detector speed (ms / image, best of 3, 1 thread)", "",
           "| size | clean | down2 |", "|---|---|---|"]
    md += [speed(s, det) for s in sizes] + [""]
    text = "\n".join(md)
    print(text)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
