"""Training throughput: packed sequences vs padding each sample to the longest in its batch.

    python benchmarks/bench_train.py [--preset small] [--tokens 2048] [--steps 6] [--threads N]
                                     [--samples 400] [--out FILE.md]

Same model, same samples, same optimizer, in one run: the samples of the procedural default data
(built into a temporary directory) are either packed by the streaming best-fit packer into
``--tokens`` budgets (one sequence per step), or grouped in stream order into batches of the same
number of samples and padded to the longest sample of the batch (what a padded trainer does).
Throughput counts real (non-padding) tokens per second of forward + backward + AdamW step.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import platform
import tempfile
import time
from dataclasses import asdict

import torch

from procpaint.datasets import BuildConfig, TrajectoryDataset, build_dataset
from procpaint.model import build_model, model_config
from procpaint.sequence.packing import Packer
from procpaint.sequence.tokenizer import TextTokenizer
from procpaint.sequence.types import PackedBatch
from procpaint.training.losses import packed_loss


def concat(batches: list[PackedBatch]) -> PackedBatch:
    """Lay several packed batches end to end as one sequence (their samples stay independent)."""
    fields: dict = {k: [] for k in asdict(batches[0]) if k not in ("stats",)}
    off = img = 0
    for b in batches:
        for k in ("text_indexes", "latent_indexes", "ce_indexes"):
            fields[k].append(getattr(b, k) + off)
        fields["latent_image_ids"].append(b.latent_image_ids + img)
        for k in ("text_ids", "position_ids", "latent_patch_ids", "latent_timesteps", "latent_noised",
                  "ce_labels", "sample_lens", "split_lens", "attn_modes"):
            fields[k].append(getattr(b, k))
        if b.images.shape[0]:  # a pack without images carries an empty (0, ...) placeholder
            fields["images"].append(b.images)
        off, img = off + b.seq_len, img + b.images.shape[0]
    if not fields["images"]:
        fields["images"].append(batches[0].images)
    out = {k: (torch.cat(v) if isinstance(v[0], torch.Tensor) else list(itertools.chain(*v)))
           for k, v in fields.items() if k not in ("seq_len", "num_real_tokens", "num_samples")}
    return PackedBatch(seq_len=off, num_real_tokens=sum(b.num_real_tokens for b in batches),
                       num_samples=sum(b.num_samples for b in batches), **out)


def padded_batches(samples, tok, ppt, mls, group: int):
    """Batches of ``group`` samples, each padded to the longest sample of its batch."""
    planner = Packer(tok, pixels_per_token=ppt, max_tokens=10**6, max_latent_size=mls).planner
    for i in range(0, len(samples), group):
        chunk = samples[i:i + group]
        longest = max(planner.num_tokens(s) for s in chunk)
        parts = []
        for s in chunk:
            p = Packer(tok, pixels_per_token=ppt, max_tokens=longest, overflow_buffer=0, max_latent_size=mls)
            parts += p.add(s) + p.flush()
        yield concat(parts)


def run(model, opt, batches, steps: int) -> tuple[float, int]:
    tokens, t0 = 0, None
    for i, b in enumerate(itertools.islice(batches, steps + 1)):
        if i == 1:
            t0 = time.perf_counter()                                        # first step is warm-up
        out = model(b, generator=torch.Generator().manual_seed(i))
        parts = packed_loss(out.ce_logits, b.ce_labels, out.v_pred, out.clean, out.noise)
        opt.zero_grad(set_to_none=True)
        parts.loss.backward()
        opt.step()
        tokens += b.num_real_tokens if i else 0
    return time.perf_counter() - t0, tokens


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = tempfile.mkdtemp(prefix="bench_train_")
    build_dataset(root, cfg=BuildConfig(image_size=32, multiturn=args.samples // 2, conflict=args.samples // 4,
                                       alignment=args.samples // 4), progress=False)
    tok = TextTokenizer(f"{root}/tokenizer.json")
    mc = model_config(args.preset, vocab_size=tok.vocab_size, patch_size=4)
    ppt, mls = mc.pixels_per_token, mc.max_latent_size
    samples = list(TrajectoryDataset(root, image_size=32, seed=0))
    packer = Packer(tok, pixels_per_token=ppt, max_tokens=args.tokens, max_latent_size=mls, seed=0)
    packs = list(packer.pack_stream(iter(samples)))
    per_pack = sum(p.num_samples for p in packs) / len(packs)
    group = max(1, round(per_pack))
    eff_pack = sum(p.num_real_tokens for p in packs) / sum(p.seq_len for p in packs)
    padded = list(itertools.islice(padded_batches(samples, tok, ppt, mls, group), args.steps + 1))
    eff_pad = sum(p.num_real_tokens for p in padded) / sum(p.seq_len for p in padded)

    rows = []
    for name, batches in (("packed", packs), ("padded to longest", padded)):
        torch.manual_seed(0)
        model = build_model(mc)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        secs, tokens = run(model, opt, iter(batches), args.steps)
        rows.append((name, secs / args.steps, tokens / secs,
                     sum(b.seq_len for b in batches[1:args.steps + 1]) / args.steps))
    base = rows[1][2]
    n_params = sum(p.numel() for p in model.parameters())
    threads = f" --threads {args.threads}" if args.threads else ""
    lines = [
        f"# Training throughput: packing vs padding ({datetime.date.today()})", "",
        f"- machine: {cpu_name()}, {torch.get_num_threads()} torch threads (shared 2-core VM: noisy)",
        f"- torch {torch.__version__}; preset `{args.preset}` ({n_params / 1e6:.1f}M "
        f"params), 32 px images, patch 4; budget {args.tokens} tokens; {args.steps} timed steps "
        "after 1 warm-up",
        f"- command: `python benchmarks/bench_train.py --preset {args.preset} --tokens {args.tokens} "
        f"--steps {args.steps} --samples {args.samples}{threads}`",
        f"- samples per step: {per_pack:.2f} packed, {group} per padded batch; token efficiency "
        f"{eff_pack:.3f} packed vs {eff_pad:.3f} padded", "",
        "| mode | s/step | seq len/step | real tokens/s | ratio |", "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {s:.3f} | {L:.0f} | {t:.0f} | {t / base:.2f}x |" for n, s, t, L in rows]
    lines += ["", f"Target (issue 6): packed >= 1.5x padded real tokens/s -> "
              f"{'met' if rows[0][2] / base >= 1.5 else 'NOT met'} ({rows[0][2] / base:.2f}x)."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
