"""Packing throughput and efficiency on synthetic trajectory-shaped samples.

Samples: a prompt, then 1-5 rounds of plan text, a generated image (noised + clean copy), critique
text and, half the time, a refine text with a second generated image; text segments of 20-150
tokens, images of 16-1024 latent tokens (one resolution per sample, 4x4 to 32x32 tokens). For each
budget the script streams the same samples through the packer (tokenizing, planning, best-fit,
building every tensor) and prints:

* samples/s and tokens/s of the packer (the whole pipeline, single process);
* packing efficiency (real tokens / budget) over all packs;
* the baseline inside: padding each sample to the longest of its pack (same samples per step), and a
  pad-to-longest batcher under the same budget (arrival order, k * longest <= budget), with the number
  of steps each needs for the same samples (the throughput ratio at equal per-step cost).

    python benchmarks/bench_packing.py [--quick] [--out benchmarks/results/DATE-packing-cpu.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import sys
import time
import warnings

import torch

from procpaint.sequence.packing import Packer, SkippedSamplesWarning
from procpaint.sequence.tokenizer import TextTokenizer, build_word_level
from procpaint.sequence.types import ImageSegment, Sample, TextSegment

WORDS = [f"w{i}" for i in range(200)]
PPT = 2  # pixel codec: 2x2 pixels per latent token
SIDES = (4, 8, 16, 32)  # latent tokens per side -> 16, 64, 256, 1024 tokens per image


NOTES = """
Columns: *efficiency* = real tokens / (budget x packs); *eff. (all but last)* leaves out the pack
flushed at the end of the stream. *pad-to-longest (same packs)* = real tokens / (samples x longest)
over the same packs (what `PackedBatch.stats["pad_to_longest_efficiency"]` reports; large buffers
group similar lengths, which flatters it). *pad-to-longest batches* is the baseline a padding loader
would run: arrival order, k samples per batch with k x longest <= budget; its efficiency is
real / padded tokens and *steps* compares how many steps each needs for the same samples (at equal
per-step cost, the ratio is the throughput gain of packing). Samples longer than the budget are
skipped and counted (most 3-5-round samples with 1024-token images at 4K). Throughput is the whole
pipeline in one process (tokenize, plan, best-fit, build tensors); the machine was shared with
other jobs, so samples/s varies run to run by up to ~2x.
"""


def make_samples(n: int, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    pool = {s: [torch.rand(3, s * PPT, s * PPT) * 2 - 1 for _ in range(12)] for s in SIDES}
    text = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 150)))  # noqa: E731
    out = []
    for i in range(n):
        images = iter(rng.sample(pool[rng.choice(SIDES)], 12))
        segs = [TextSegment(text(), role="prompt")]
        for _ in range(rng.randint(1, 5)):
            segs += [TextSegment(text(), loss=True, role="plan"), ImageSegment(next(images), loss=True),
                     TextSegment(text(), loss=True, role="critique")]
            if rng.random() < 0.5:
                segs += [TextSegment(text(), loss=True, role="refine"), ImageSegment(next(images), loss=True)]
        out.append(Sample(segs, eos=True, id=f"s{i}"))
    return out


def pad_batcher(lengths: list[int], budget: int) -> tuple[int, int]:
    """Arrival-order batches padded to their longest, k * longest <= budget: (steps, padded tokens)."""
    steps = padded = 0
    k = longest = 0
    for n in lengths:
        if (k + 1) * max(longest, n) > budget:
            steps, padded = steps + 1, padded + k * longest
            k = longest = 0
        k, longest = k + 1, max(longest, n)
    if k:
        steps, padded = steps + 1, padded + k * longest
    return steps, padded


def run(tok: TextTokenizer, samples: list[Sample], budget: int, buffer: int) -> dict:
    packer = Packer(tok, pixels_per_token=PPT, max_tokens=budget, overflow_buffer=buffer,
                    p_drop_text=0.1, p_drop_image=0.1, seed=0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedSamplesWarning)
        packs = list(packer.pack_stream(samples))
    dt = time.perf_counter() - t0
    real = sum(b.num_real_tokens for b in packs)
    by_arrival = sorted((a, n) for b in packs for a, n in zip(b.stats["arrivals"], b.sample_lens))
    lengths = [n for _, n in by_arrival]  # the baseline sees the stream in arrival order
    pad_steps, pad_tokens = pad_batcher(lengths, budget)
    c = packer.counters
    return dict(budget=budget, buffer=buffer, samples=len(samples), packed=c["packed_samples"],
                skipped=c["skipped_too_long"], packs=len(packs), seconds=dt,
                samples_s=len(samples) / dt, tokens_s=real / dt,
                eff=real / (budget * len(packs)),
                eff_full=sum(b.stats["efficiency"] for b in packs[:-1]) / max(len(packs) - 1, 1),
                pad_longest_same=real / sum(b.stats["pad_to_longest_tokens"] for b in packs),
                pad_batch_eff=real / pad_tokens, pad_batch_steps=pad_steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    ap.add_argument("--samples", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: as in a DataLoader worker, where packing runs)")
    ap.add_argument("--out", help="write a markdown table here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = 300 if args.quick else args.samples
    tok = TextTokenizer(build_word_level(WORDS))
    samples = make_samples(n, seed=0)
    configs = [(4096, 64), (33000, 0), (33000, 16), (33000, 64), (33000, 256)]
    rows = []
    header = ("| budget | buffer | samples/s | tokens/s | packs | skipped | efficiency | eff. (all but last) "
              "| pad-to-longest (same packs) | pad-to-longest batches: eff. | steps packed / padded |")
    print(header)
    print("|" + "---|" * 11)
    for budget, buffer in configs:
        r = run(tok, samples, budget, buffer)
        line = (f"| {budget} | {buffer} | {r['samples_s']:.0f} | {r['tokens_s'] / 1e6:.2f}M | {r['packs']} "
                f"| {r['skipped']}/{r['samples']} | {r['eff']:.4f} | {r['eff_full']:.4f} "
                f"| {r['pad_longest_same']:.4f} | {r['pad_batch_eff']:.4f} "
                f"| {r['packs']} / {r['pad_batch_steps']} ({r['pad_batch_steps'] / r['packs']:.2f}x) |")
        print(line, flush=True)
        rows.append(line)
    if args.out:
        with open("/proc/cpuinfo") as info:
            cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")),
                       platform.processor())
        with open(args.out, "w") as f:
            f.write(f"# Packing benchmark ({datetime.date.today().isoformat()})\n\n")
            f.write(f"- machine: {cpu}, {os.cpu_count()} cores ({platform.machine()}), load average "
                    f"{os.getloadavg()[0]:.1f} at the end (shared machine); torch threads "
                    f"{torch.get_num_threads()}\n")
            f.write(f"- torch {torch.__version__}, Python {platform.python_version()}\n")
            f.write(f"- command: `python {' '.join(sys.argv)}`\n")
            f.write(f"- data: {n} synthetic trajectories (text 20-150 tokens/segment, images 16-1024 "
                    "tokens, 1-5 rounds), p_drop_text = p_drop_image = 0.1\n\n")
            f.write(header + "\n|" + "---|" * 11 + "\n" + "\n".join(rows) + "\n")
            f.write(NOTES)


if __name__ == "__main__":
    main()
