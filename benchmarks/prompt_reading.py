"""How much a single-pass model reads its prompt: flow MSE of training images with their own prompt
vs other samples' prompts, at a few flow times, through the inference engine.

    python benchmarks/prompt_reading.py --export runs/X/export --data DATA_DIR [--images 8] [--t 0.95 0.7 0.4]

A model that ignores the prompt scores the same with the right and the wrong prompts (gap 0). The gap
at high t is a far more sensitive sign of conditioning than a handful of GenEval verdicts
(benchmarks/results/2026-12-03-recipe-cpu.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@torch.no_grad()
def prompt_reading(export: str, data: str, images: int = 8, times=(0.95, 0.7, 0.4), seed: int = 0) -> dict:
    from procpaint.datasets import TrajectoryDataset
    from procpaint.inference import load_generator
    from procpaint.inference.engine import Engine, ImageSpan, Query, TextSpan

    gen = load_generator(export)
    model = gen.model.eval()
    pairs = []
    for s in TrajectoryDataset(data, subsets=("multiturn",), image_size=gen.image_size, shuffle=False):
        target = [seg.image for seg in s.segments if hasattr(seg, "image") and seg.loss]
        if target:
            pairs.append((s.meta["prompt"], target[-1]))
        if len(pairs) >= images:
            break
    engine = Engine(model, gen.tok.vision_start_id, gen.tok.vision_end_id)
    h = w = gen.image_size // model.cfg.pixels_per_token
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t in times:
        mse = torch.zeros(len(pairs), len(pairs))
        for i, (_, img) in enumerate(pairs):
            clean = model.codec.encode(img[None])[0]
            noise = torch.randn(clean.shape, generator=g)
            zt = t * noise + (1 - t) * clean
            for j, (prompt, _) in enumerate(pairs):
                ids = gen.tok.encode(prompt)
                (hid,) = engine.run([Query([TextSpan(ids, 0), ImageSpan(zt, t, len(ids), (h, w), noise=True)])])
                v = model.predict_velocity(hid[-h * w - 1:-1], zt, t)
                mse[i, j] = ((v - (noise - clean)) ** 2).mean()
        n = len(pairs)
        right = float(mse.diag().mean())
        wrong = float((mse.sum() - mse.diag().sum()) / (n * n - n))
        out[f"t={t}"] = {"right": round(right, 4), "wrong": round(wrong, 4), "gap": round(wrong - right, 4)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True)
    ap.add_argument("--data", required=True, help="dataset directory the model was trained on")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--t", type=float, nargs="+", default=[0.95, 0.7, 0.4])
    args = ap.parse_args(argv)
    print(json.dumps(prompt_reading(args.export, args.data, args.images, args.t), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
