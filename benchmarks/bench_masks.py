"""Benchmark: packing attention masks, native kernels vs PyTorch references vs create_block_mask.

    python benchmarks/bench_masks.py [--quick] [--device cpu|cuda] [--threads N] [--eager-max-len N]
                                     [--out FILE.md]

Packings are shaped like real trajectories: samples of prompt / plan / critique text splits of
20-150 tokens (causal) and generated images of 64-1024 latent tokens as a noise + full split
pair, several samples per pack, the remainder padded as its own sample, at L = 4K, 8K, 16K, 33K
(--quick: 4K, 8K).

Dense mask: ``attention_mask`` (native, writes each row once) vs ``attention_mask_ref`` (the
rule evaluated on every pair, chunked). Write GB/s counts the L*L bytes written; it is compared
with ``copy_`` of an L*L bool buffer measured in this run, whose GB/s counts bytes read + written.
The kernel is timed returning a fresh tensor (allocation and first-touch page faults included,
as a caller pays; ``torch.empty(L, L).fill_`` is printed as the floor for that) and writing into a
reused buffer (``out=``), which is what the bandwidth target measures.

BlockMask: ``block_mask`` (native classification from split metadata) vs ``block_mask_ref``
(the same derivation in torch ops) vs ``create_block_mask(mask_mod(...))`` eager and
``torch.compile``d (timed after warm-up; compile time reported apart). Eager create_block_mask
evaluates all L*L pairs: above --eager-max-len it is not run but extrapolated as c * L^2 from
the largest measured size, and the table says so.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import sys
import time

import torch
from torch.nn.attention.flex_attention import create_block_mask

from procpaint import _ext
from procpaint.kernels import masks as P

TARGETS = ("block_mask at L=33K: >= 1000x faster than eager create_block_mask on CPU and faster than "
           "torch.compile'd create_block_mask after warm-up; dense attention_mask at L=16K writing at "
           ">= 50% of measured copy_ bandwidth.")
SIZES = (4096, 8192, 16384, 33000)
IMAGE_TOKENS = (64, 256, 576, 1024)


def trajectory(rng: random.Random) -> tuple[list[int], list[str]]:
    """One sample: prompt, 1-3 rounds of plan + image (noise, full) + critique [+ refine + image]."""
    text = lambda: rng.randint(20, 150)
    lens, modes = [text()], ["causal"]
    for _ in range(rng.randint(1, 3)):
        rounds = 2 if rng.random() < 0.4 else 1  # with a refine step, a second image
        for _ in range(rounds):
            image = rng.choice(IMAGE_TOKENS)
            lens += [text(), image, image, text()]
            modes += ["causal", "noise", "full", "causal"]
    return lens, modes


def make_packing(seq_len: int, seed: int = 0):
    """Greedy pack of trajectories into seq_len tokens, padding as a final causal sample."""
    rng = random.Random(seed)
    splits, modes, samples, used, misses = [], [], [], 0, 0
    while misses < 20:
        lens, ms = trajectory(rng)
        if used + sum(lens) > seq_len:
            misses += 1
            continue
        splits += lens
        modes += ms
        samples.append(sum(lens))
        used += sum(lens)
    if used < seq_len:
        splits.append(seq_len - used)
        modes.append("causal")
        samples.append(seq_len - used)
    return splits, modes, samples


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device, repeat: int, warmup: int = 1) -> float:
    """Median seconds of `repeat` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_gbps(L: int, device) -> float:
    src = torch.ones(L * L, dtype=torch.bool, device=device)
    dst = torch.empty_like(src)
    t = timeit(lambda: dst.copy_(src), device, repeat=5)
    return 2 * L * L / t / 1e9  # bytes read + written


def fmt_t(t: float) -> str:
    return f"{t * 1e3:.3f} ms" if t < 1 else f"{t:.2f} s"


def bench_size(L: int, device, args, eager_fit: dict) -> dict:
    p = make_packing(L)
    rep = 3 if L >= 16384 else 5
    row = {"L": L, "splits": len(p[0]), "samples": len(p[2])}
    bw = copy_gbps(L, device)
    row["copy_gbps"] = bw
    row["mask_kernel"] = timeit(lambda: P.attention_mask(*p, device=device), device, rep)
    row["mask_ref"] = timeit(lambda: P.attention_mask_ref(*p, device=device), device, 1 if L >= 16384 else 3)
    row["write_gbps"] = L * L / row["mask_kernel"] / 1e9
    buf = torch.empty(L, L, dtype=torch.bool, device=device)
    row["mask_out"] = timeit(lambda: P.attention_mask(*p, out=buf), device, rep)
    row["out_gbps"] = L * L / row["mask_out"] / 1e9
    # the floor for any function returning a fresh L*L tensor: allocation + first touch
    fresh_fill = lambda: torch.empty(L, L, dtype=torch.bool, device=device).fill_(True)
    row["empty_fill"] = timeit(fresh_fill, device, rep)
    row["bias_bf16_kernel"] = timeit(lambda: P.attention_bias(*p, dtype=torch.bfloat16, device=device),
                                     device, rep)
    row["bm_kernel"] = timeit(lambda: P.block_mask(*p, device=device), device, 20)
    row["bm_ref"] = timeit(lambda: P.block_mask_ref(*p, device=device), device, 5)
    mm = P.mask_mod(*p, device=device)
    if L <= args.eager_max_len:
        row["cbm_eager"] = timeit(lambda: create_block_mask(mm, None, None, L, L, device=device), device, 1,
                                  warmup=0)
        eager_fit["c"], eager_fit["L"] = row["cbm_eager"] / L**2, L
        row["cbm_eager_note"] = "measured"
    else:
        row["cbm_eager"] = eager_fit["c"] * L**2
        row["cbm_eager_note"] = f"extrapolated c*L^2 from L={eager_fit['L']}"
    torch._dynamo.reset()
    compiled = torch.compile(create_block_mask)
    t0 = time.perf_counter()
    compiled(mm, None, None, L, L, device=device)
    sync(device)
    row["cbm_compile_first"] = time.perf_counter() - t0
    row["cbm_compiled"] = timeit(lambda: compiled(mm, None, None, L, L, device=device), device, 3)
    return row


def render(rows, device, args) -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor()) if sys.platform.startswith("linux") else platform.processor()
    lines = [
        f"# Packing masks benchmark ({device.type})", "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, load average "
        f"{os.getloadavg()[0]:.1f} at the end (other jobs shared the machine)"
        + (f", GPU {torch.cuda.get_device_name()}" if device.type == "cuda" else ""),
        f"- torch {torch.__version__}, Python {platform.python_version()}, native extension: "
        f"{'yes' if _ext.available() else 'NO (reference fallback)'}",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- targets: {TARGETS}", "",
        "## Dense mask (L x L bool)", "",
        "| L | splits | samples | kernel (fresh out) | empty+fill_ (fresh) | reference | ref/kernel | "
        "kernel out= (reused) | write GB/s fresh / out= | copy_ GB/s (r+w) | % of copy_ fresh / out= | "
        "bias bf16 kernel |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['L']} | {r['splits']} | {r['samples']} | {fmt_t(r['mask_kernel'])} | "
                     f"{fmt_t(r['empty_fill'])} | {fmt_t(r['mask_ref'])} | "
                     f"{r['mask_ref'] / r['mask_kernel']:.1f}x | "
                     f"{fmt_t(r['mask_out'])} | {r['write_gbps']:.2f} / {r['out_gbps']:.2f} | "
                     f"{r['copy_gbps']:.2f} | {100 * r['write_gbps'] / r['copy_gbps']:.0f}% / "
                     f"{100 * r['out_gbps'] / r['copy_gbps']:.0f}% | {fmt_t(r['bias_bf16_kernel'])} |")
    lines += [
        "", "## BlockMask (block 128)", "",
        "| L | kernel | reference | create_block_mask eager | eager/kernel | compiled (warm) | "
        "compiled/kernel | first compiled call | eager is |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['L']} | {fmt_t(r['bm_kernel'])} | {fmt_t(r['bm_ref'])} | "
                     f"{fmt_t(r['cbm_eager'])} | "
                     f"{r['cbm_eager'] / r['bm_kernel']:.0f}x | {fmt_t(r['cbm_compiled'])} | "
                     f"{r['cbm_compiled'] / r['bm_kernel']:.0f}x | {fmt_t(r['cbm_compile_first'])} | "
                     f"{r['cbm_eager_note']} |")
    big = {r["L"]: r for r in rows}
    lines += ["", "## Against the targets", ""]
    if 33000 in big:
        r = big[33000]
        lines.append(f"- block_mask L=33000: {r['cbm_eager'] / r['bm_kernel']:.0f}x vs eager "
                     f"create_block_mask ({r['cbm_eager_note']}; target >= 1000x), "
                     f"{r['cbm_compiled'] / r['bm_kernel']:.0f}x vs compiled (target > 1x)")
    if 16384 in big:
        r = big[16384]
        lines.append(f"- attention_mask L=16384: {100 * r['out_gbps'] / r['copy_gbps']:.0f}% of copy_ "
                     f"bandwidth "
                     f"writing into a reused buffer (out=), {100 * r['write_gbps'] / r['copy_gbps']:.0f}% "
                     f"returning a fresh tensor, whose page faults dominate (torch.empty+fill_ alone: "
                     f"{fmt_t(r['empty_fill'])}) (target >= 50%)")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="L = 4K and 8K only")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--eager-max-len", type=int, default=16384,
                    help="largest L at which eager create_block_mask is run (beyond: extrapolated)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (the kernels' OpenMP follows it)")
    ap.add_argument("--out", help="write the markdown table here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if not _ext.available():
        print(f"warning: native extension unavailable ({_ext.unavailable_reason()}); timing references only",
              file=sys.stderr)
    rows, fit = [], {}
    for L in SIZES[:2] if args.quick else SIZES:
        rows.append(bench_size(L, device, args, fit))
        print(f"L={L} done", file=sys.stderr, flush=True)
    text = render(rows, device, args)
    print(text)
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            f.write(text)
        os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
