"""Forward / forward+backward time of the unified model on one packed sequence.

    python benchmarks/bench_model.py [--presets debug small] [--tokens 2048] [--backend sdpa]
                                     [--ac] [--quick] [--out FILE.md]

Packs come from the real packer (procpaint.sequence.packing) over synthetic trajectories: prompt,
plan (CE), a generated 32x32 image (noised + clean copy, 256 latent tokens each), critique (CE).
The baseline is the same model in its dense form (``mot=False``): MoT routes every token through
one expert, so its FLOPs per token match the dense model's and the ratio shows the routing cost
(gathers). Achieved GFLOP/s uses :func:`procpaint.model.flops_per_token` with the pack's mean
attended keys per query.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import random
import time

import torch
import torch.nn.functional as F

from procpaint.kernels.masks import attention_mask
from procpaint.model import apply_activation_checkpointing, build_model, flops_per_token, model_config
from procpaint.sequence.packing import Packer
from procpaint.sequence.tokenizer import TextTokenizer, build_word_level
from procpaint.sequence.types import ImageSegment, Sample, TextSegment

WORDS = [f"w{i}" for i in range(200)]


def make_pack(tokens: int, ppt: int, seed: int = 0):
    rng = random.Random(seed)
    tok = TextTokenizer(build_word_level(WORDS))
    say = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))

    def sample(i):
        return Sample([TextSegment(say(20), role="prompt"), TextSegment(say(20), loss=True, role="plan"),
                       ImageSegment(torch.rand(3, 32, 32) * 2 - 1, loss=True),
                       TextSegment(say(20), loss=True, role="critique")], eos=True, id=str(i))

    packer = Packer(tok, pixels_per_token=ppt, max_tokens=tokens, overflow_buffer=0, seed=seed)
    for i in range(1000):
        out = packer.add(sample(i))
        if out:
            return out[0], len(tok.tok.get_vocab())
    raise RuntimeError("no pack produced")


def timeit(fn, iters: int) -> float:
    fn()                                                                     # warm-up
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def bench(cfg, batch, iters: int, ac: bool) -> dict:
    model = build_model(cfg)
    torch.nn.init.normal_(model.llm2vae.weight, std=0.02)
    if ac:
        apply_activation_checkpointing(model)
    noise = torch.randn(int(batch.latent_noised.sum()), cfg.latent_dim)

    def fwd():
        with torch.no_grad():
            model(batch, noise=noise)

    def fwd_bwd():
        out = model(batch, noise=noise)
        mse = (out.v_pred - (out.noise - out.clean)).pow(2).mean()
        loss = F.cross_entropy(out.ce_logits, batch.ce_labels) + mse
        loss.backward()
        model.zero_grad(set_to_none=True)

    return dict(params=sum(p.numel() for p in model.parameters()), fwd=timeit(fwd, iters),
                fwd_bwd=timeit(fwd_bwd, iters))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["debug", "small"])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--backend", default="sdpa")
    ap.add_argument("--ac", action="store_true", help="activation checkpointing")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="1024 tokens, 2 iterations")
    ap.add_argument("--out", help="write a markdown table here")
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.iters = 1024, 2
    rows = []
    for preset in args.presets:
        base = model_config(preset, attn_backend=args.backend)
        batch, vocab = make_pack(args.tokens, base.pixels_per_token)
        cfg = dataclasses.replace(base, vocab_size=vocab)
        mask = attention_mask(batch.split_lens, batch.attn_modes, batch.sample_lens)
        ctx_len = mask.sum().item() / batch.seq_len                            # mean keys per query
        flops = flops_per_token(cfg, ctx_len, lm_head_fraction=batch.ce_indexes.numel() / batch.seq_len)
        for mot in (True, False):
            r = bench(dataclasses.replace(cfg, mot=mot), batch, args.iters, args.ac)
            r.update(preset=preset, mot=mot, tok_s=batch.seq_len / r["fwd_bwd"],
                     gflops=flops * batch.seq_len / r["fwd_bwd"] / 1e9)
            rows.append(r)
            print(f"{preset:6s} mot={mot!s:5s} params={r['params'] / 1e6:8.2f}M  L={batch.seq_len}  "
                  f"fwd {r['fwd'] * 1e3:8.1f} ms  fwd+bwd {r['fwd_bwd'] * 1e3:8.1f} ms  "
                  f"{r['tok_s']:8.0f} tok/s  {r['gflops']:6.1f} GFLOP/s", flush=True)
        mot_r, dense_r = rows[-2], rows[-1]
        print(f"{preset:6s} MoT / dense fwd+bwd time: {mot_r['fwd_bwd'] / dense_r['fwd_bwd']:.2f}x")
    if args.out:
        machine = platform.machine()
        if os.path.exists("/proc/cpuinfo"):
            with open("/proc/cpuinfo") as f:
                names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
            machine = f"{names[0]} x {len(names)}" if names else machine
        env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
        head = (f"# bench_model ({datetime.date.today()})\n\nmachine: {machine}, "
                f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at the end "
                f"(other processes share the cores); torch {torch.__version__}; backend {args.backend}; "
                f"activation checkpointing {args.ac}\ncommand: `{env}python benchmarks/bench_model.py "
                f"--presets {' '.join(args.presets)} --tokens {args.tokens} --iters {args.iters}`\n\n"
                "| preset | mot | params | fwd ms | fwd+bwd ms | tokens/s | GFLOP/s |\n"
                "|---|---|---|---|---|---|---|\n")
        body = "".join(f"| {r['preset']} | {r['mot']} | {r['params'] / 1e6:.2f}M | {r['fwd'] * 1e3:.1f} | "
                       f"{r['fwd_bwd'] * 1e3:.1f} | {r['tok_s']:.0f} | {r['gflops']:.1f} |\n" for r in rows)
        with open(args.out, "w") as f:
            f.write(head + body)


if __name__ == "__main__":
    main()
