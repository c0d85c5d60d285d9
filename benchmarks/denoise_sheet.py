"""What the model believes the picture is at each flow time: a sheet of its clean-image estimate
x0(t) = z_t - t v(z_t, t) for the first generated image of held-out trajectories.

    python benchmarks/denoise_sheet.py --export runs/X/version_0/export --data DATA_DIR/val \\
        --out sheet.png [--images 10] [--t 1.0 0.95 0.85 0.7 0.5 0.3]

Each row: the target image, then x0(t) for each t, from the trajectory's own text context (prompt and
plan, as in training) and one noise draw shared by the row. Where x0(t) is already the target, the
model needs no help from the sampler; where it is a faint smear (the mean over the places and shapes
the text allows), the sampler must commit to one of them from the noise, which is where a model that
does not coordinate its tokens scatters them (benchmarks/results/2026-12-03-recipe-cpu.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@torch.no_grad()
def denoise_rows(export: str, data: str, images: int, times: list[float], seed: int = 0):
    """(rows (images, 3, H, (1 + len(times)) W) in [-1, 1], the rows' texts)."""
    from procpaint.datasets import TrajectoryDataset
    from procpaint.inference import load_generator
    from procpaint.inference.engine import Engine, ImageSpan, Query, TextSpan
    from procpaint.sequence.types import TextSegment

    gen = load_generator(export)
    model = gen.model.eval()
    picked: list[tuple[str, torch.Tensor]] = []
    for s in TrajectoryDataset(data, subsets=("multiturn",), image_size=gen.image_size, shuffle=False):
        text = []
        for seg in s.segments:                 # the text before the first generated image
            if isinstance(seg, TextSegment):
                text.append(seg.text)
            elif seg.loss:
                picked.append((" ".join(text), seg.image))
                break
            else:
                break                          # a context image first: not a first draft
        if len(picked) >= images:
            break
    if not picked:
        raise SystemExit(f"{data}: no multi-turn trajectory whose first image is generated")
    engine = Engine(model, gen.tok.vision_start_id, gen.tok.vision_end_id)
    h = w = gen.image_size // model.cfg.pixels_per_token
    g = torch.Generator().manual_seed(seed)
    rows, texts = [], []
    for text, img in picked:
        clean = model.codec.encode(img[None])[0]
        noise = torch.randn(clean.shape, generator=g)
        ids = gen.tok.encode(text)
        cells = [img]
        for t in times:
            zt = t * noise + (1 - t) * clean
            (hid,) = engine.run([Query([TextSpan(ids, 0), ImageSpan(zt, t, len(ids), (h, w), noise=True)])])
            v = model.predict_velocity(hid[-h * w - 1:-1], zt, t)
            cells.append(model.codec.decode((zt - t * v)[None], h, w)[0])
        rows.append(torch.cat(cells, -1).clamp(-1, 1))
        texts.append(text)
    return torch.stack(rows), texts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True)
    ap.add_argument("--data", required=True, help="a dataset directory (its held-out `val` split)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--t", type=float, nargs="+", default=[1.0, 0.95, 0.85, 0.7, 0.5, 0.3])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=int, default=2, help="pixel repeat of the saved sheet")
    args = ap.parse_args(argv)
    from PIL import Image

    rows, texts = denoise_rows(args.export, args.data, args.images, args.t, args.seed)
    grid = torch.cat(list(rows), -2)
    arr = ((grid.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).resize((arr.shape[1] * args.scale, arr.shape[0] * args.scale), Image.NEAREST).save(args.out)
    print(f"columns: target, then x0(t) at t = {args.t}")
    for k, text in enumerate(texts):
        print(f"row {k}: {text}")
    print(f"sheet: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
