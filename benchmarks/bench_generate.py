"""Inference cost of process-driven generation on CPU (the paper's "inference cost" column).

Measures, per prompt:
  1. process (Plan -> Sketch -> Inspect -> Refine, 4 images) vs single-pass (prompt -> one image):
     forward passes and wall time, with the KV cache;
  2. the KV cache against its baseline, recomputing the whole prefix at every call (use_cache=False),
     on the same 4-image and 5-image trajectories (target: >= 3x);
  3. batching: 16 trajectories in one batch vs one by one (target >= 2x), and where a batch's time
     goes (embedding, masks/cache slots, transformer, cache writes, next-token and flow updates).

A randomly initialised model writes noise, so trajectories are scripted (a logits processor biases
the next token of a fixed 4- or 5-image script); every call still runs the full model and sampler,
so costs are those of real trajectories of that shape. ``--ckpt`` uses trained weights instead
(then the model's own trajectory lengths decide the cost).

    python benchmarks/bench_generate.py [--preset small] [--steps 50] [--batch 16] [--quick] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from procpaint.inference import GenerationConfig, Painter, load_generator  # noqa: E402
from procpaint.model import build_model, flops_per_token, model_config  # noqa: E402
from procpaint.sequence.tokenizer import TextTokenizer, build_word_level  # noqa: E402
from procpaint.world import vocabulary  # noqa: E402

ROUND = ["<ins>add a red circle left of a blue square</ins>", "<des>a red circle left of a blue square</des>",
         "VS", "the image matches the plan"]
REFINE = ["the image is missing a blue square", "<refine>add a blue square</refine>", "VS"]
SCRIPTS = {4: ROUND + REFINE + ROUND + ROUND + ["EOS"], 5: ROUND + REFINE + ROUND + REFINE + ROUND + ["EOS"]}
LOAD = 0.0
PROMPT = "a photo of a red circle left of a blue square"


def encode(tok: TextTokenizer, parts: list[str]) -> list[int]:
    out = []
    for p in parts:
        out += [tok.vision_start_id] if p == "VS" else [tok.eos_id] if p == "EOS" else tok.encode(p)
    return out


def scripted(script: list[int]):
    calls: dict[int, int] = defaultdict(int)

    def proc(idx, history, logits):
        k = calls[idx]
        calls[idx] += 1
        if k < len(script):
            logits = logits.clone()
            logits[script[k]] += 50.0
        return logits
    return proc


def timed(gen: Painter, prompts, cfg, script, repeats: int):
    """Best-of-``repeats`` wall time of one generate call, and its results."""
    best, res = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = gen.generate(prompts, cfg, logits_processor=scripted(script) if script else None)
        best = min(best, time.perf_counter() - t0)
    return best, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--ckpt", help="use trained weights (.ckpt or export dir) instead of a random model")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--batch", type=int, default=16, help="prompts of the batched rows")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="10 flow steps, 1 repeat")
    ap.add_argument("--out", help="write a markdown table here")
    args = ap.parse_args()
    global LOAD
    LOAD = os.getloadavg()[0]
    if args.quick:
        args.steps, args.repeats = 10, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ckpt:
        gen = load_generator(args.ckpt, args.device)
        scripts = {k: None for k in SCRIPTS}
    else:
        tok = TextTokenizer(build_word_level(vocabulary()))
        torch.manual_seed(0)
        mcfg = model_config(args.preset, vocab_size=tok.vocab_size, attn_backend="sdpa", patch_size=4)
        model = build_model(mcfg, device=args.device)
        torch.nn.init.normal_(model.llm2vae.weight, std=0.02)
        gen = Painter(model.eval(), tok, image_size=args.image_size)
        scripts = {k: encode(tok, s) for k, s in SCRIPTS.items()}
    cfg = GenerationConfig(num_steps=args.steps, max_text_tokens=64)
    rows = []

    # Matmul FLOPs per model token (attention excluded: its cost depends on each query's context).
    fpt = flops_per_token(gen.model.cfg, 0.0, training=False)

    def row(name, secs, res, note=""):
        r = res[0]
        tflops = sum(x.model_tokens for x in res) * fpt / (secs * len(res)) / 1e12
        note = f"{note}; {tflops:.3f} matmul TFLOP/s" if note else f"{tflops:.3f} matmul TFLOP/s"
        rows.append((name, r.num_images, r.forward_passes, r.model_tokens, secs, note))
        print(f"{name:<44} images={r.num_images} passes={r.forward_passes:>4} tokens={r.model_tokens:>7} "
              f"{secs:8.3f} s  {note}", flush=True)

    t_sp, r_sp = timed(gen, [PROMPT], replace(cfg, mode="single-pass"), None, args.repeats)
    row("single-pass (cache)", t_sp, r_sp)
    ratios, cache_mb = {}, {}
    for n in (4, 5):
        t_c, r_c = timed(gen, [PROMPT], cfg, scripts[n], args.repeats)
        cache_mb[n] = gen.last_profile["cache bytes at peak"] / 2**20
        row(f"process {n}-image script (cache)", t_c, r_c,
            f"{t_c / t_sp:.1f}x single-pass time; cache {cache_mb[n]:.2f} MB at its peak")
        t_u, r_u = timed(gen, [PROMPT], replace(cfg, use_cache=False), scripts[n], args.repeats)
        ratios[n] = t_u / t_c
        row(f"process {n}-image script (recompute prefix)", t_u, r_u, f"cache speed-up {ratios[n]:.2f}x")
    t_1 = rows[1][4]
    t_cfg, r_cfg = timed(gen, [PROMPT], replace(cfg, cfg_text_scale=4.0, cfg_image_scale=2.0), scripts[4], 1)
    row("process 4-image, text+image CFG (cache)", t_cfg, r_cfg, f"{t_cfg / t_1:.2f}x no-CFG time")
    t_tcfg, r_tcfg = timed(gen, [PROMPT], replace(cfg, cfg_text_scale=4.0), scripts[4], 1)
    row("process 4-image, text CFG (cache)", t_tcfg, r_tcfg, f"{t_tcfg / t_1:.2f}x no-CFG time")
    n_b = args.batch
    t_b, r_b = timed(gen, [PROMPT] * n_b, cfg, scripts[4], 1)
    profile = dict(gen.last_profile)
    batch_x = t_1 * n_b / t_b
    row(f"process 4-image, batch of {n_b} (per prompt)", t_b / n_b, r_b, f"{batch_x:.2f}x one-by-one")
    t_bc, r_bc = timed(gen, [PROMPT] * n_b, replace(cfg, cfg_text_scale=4.0), scripts[4], 1)
    row(f"process 4-image, text CFG, batch of {n_b} (per prompt)", t_bc / n_b, r_bc,
        f"{t_tcfg * n_b / t_bc:.2f}x one-by-one")
    print("\nwhere the batch's time went:")
    for k, v in profile.items():
        print(f"  {k:<50} {v:10.3f}")

    if args.out:
        cpu = platform.processor() or platform.machine()
        try:
            cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                       if ln.startswith("model name"))
        except (OSError, StopIteration):
            pass
        if args.device == "cuda":
            cpu = f"{torch.cuda.get_device_name()} (host {cpu})"
        mc = gen.model.cfg
        what = f"checkpoint {args.ckpt}" if args.ckpt else f"random init, preset {args.preset}"
        cores = torch.multiprocessing.cpu_count()
        lines = [f"# bench_generate — {datetime.date.today()}", "",
                 f"- machine: {cpu}, {torch.get_num_threads()} torch thread(s) of "
                 f"{cores} cores, 1-min load average at start {LOAD:.2f}; torch {torch.__version__}",
                 f"- model: {what} "
                 f"(hidden {mc.hidden_size}, {mc.num_layers} layers, MoT={mc.mot}), image "
                 f"{gen.image_size}px = {(gen.image_size // mc.pixels_per_token) ** 2} latent tokens, "
                 f"{args.steps} flow points ({args.steps - 1} Euler steps), greedy text, "
                 f"best of {args.repeats}",
                 f"- command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`", "",
                 "| run | images | forward passes | model tokens | wall s / prompt | note |",
                 "|---|---:|---:|---:|---:|---|"]
        lines += [f"| {a} | {b} | {c} | {d} | {e:.3f} | {f} |" for a, b, c, d, e, f in rows]
        lines += ["", f"KV cache speed-up over recomputing the prefix: {ratios[4]:.2f}x (4 images), "
                  f"{ratios[5]:.2f}x (5 images); target >= 3x. Cache memory per trajectory at its peak: "
                  f"{cache_mb[4]:.2f} MB (4 images), {cache_mb[5]:.2f} MB (5 images).",
                  f"Batching: {batch_x:.2f}x one-by-one at batch {n_b}; target >= 2x.", "",
                  f"Where the batch-of-{n_b} run's time went (seconds; model-call parts sum to the calls):",
                  "", "| part | seconds | share of wall |", "|---|---:|---:|"]
        lines += [f"| {k} | {v:.3f} | {v / t_b:.0%} |" if "(count)" not in k and "bytes" not in k
                  else f"| {k} | {v:.0f} | |" for k, v in profile.items()]
        lines += [""]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
