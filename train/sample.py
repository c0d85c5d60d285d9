"""Generate trajectories from a checkpoint and draw them.

    python train/sample.py --ckpt runs/debug/version_0/checkpoints/last.ckpt \\
        --prompt "a photo of a red circle left of a blue square" [--prompt ...] [--prompts-file F] \\
        [--mode process|single-pass|planner] [--out DIR] [--seed S] [--cfg-text X] [--cfg-image X] \\
        [--steps N] [--device cpu|cuda] [--batch-size B] [--temperature T] [--top-p P]

``--ckpt`` is a Lightning ``.ckpt`` or an ``export/`` directory. For prompt i it writes
DIR/<i>.png (the trajectory strip), DIR/<i>_final.png (the last image), DIR/<i>_<k>.png (every
image) and DIR/<i>.json (texts, image paths, end reason, timings), and prints one line per prompt.
Bad input (unknown words, a missing or incompatible checkpoint, an unavailable device) is one
line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class UsageError(Exception):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="Lightning .ckpt file or export directory")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts-file", help="text file, one prompt per line (# comments, blanks skipped)")
    p.add_argument("--mode", default="process", choices=("process", "single-pass", "planner"))
    p.add_argument("--out", default="samples", help="output directory (default: samples)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-rounds", type=int, default=5)
    p.add_argument("--unconstrained", action="store_true", help="do not enforce the plan/refine tags")
    p.add_argument("--no-cache", action="store_true", help="recompute the prefix every call (slow)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=8, help="prompts generated together")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    from procpaint.inference.options import add_sampling_args

    add_sampling_args(p)
    return p.parse_args(argv)


def read_prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise UsageError(f"--prompts-file {path}: file not found")
        lines = path.read_text(encoding="utf-8").splitlines()
        prompts += [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not prompts:
        raise UsageError("no prompts: give --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts


def write_result(result, index: int, out: Path) -> None:
    from procpaint.inference.render import save_strip
    from procpaint.io import atomic_write, write_image

    paths = {}                 # stage index -> file (by position: stages hold tensors, not comparable)
    drawn = [(i, s) for i, s in enumerate(result.stages) if s.image is not None]
    for k, (i, stage) in enumerate(drawn):
        name = f"{index}_{k}.png"
        write_image(out / name, stage.image)
        paths[i] = name
    if result.final_image is not None:
        write_image(out / f"{index}_final.png", result.final_image)
    save_strip(result, out / f"{index}.png")
    atomic_write(out / f"{index}.json", result.to_json(paths) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import torch

        from procpaint.inference import CheckpointError, load_generator
        from procpaint.inference.options import generation_config
        from procpaint.sequence.tokenizer import UnknownWordsError

        if args.threads:
            torch.set_num_threads(args.threads)
        prompts = read_prompts(args)
        if args.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise UsageError(f"--out {args.out}: exists and is not a directory")
        fixed = dict(mode=args.mode, seed=args.seed, temperature=args.temperature, top_p=args.top_p,
                     max_rounds=args.max_rounds, constrained=not args.unconstrained,
                     use_cache=not args.no_cache)
        generation_config(args, **fixed)          # bad flags fail before the checkpoint is read
        try:
            gen = load_generator(args.ckpt, args.device)
        except (CheckpointError, RuntimeError, ValueError) as e:
            raise UsageError(str(e)) from e
        cfg = generation_config(args, getattr(gen, "sampling", None), **fixed)
        bad = []
        for i, p in enumerate(prompts):           # every bad prompt at once, before any work
            try:
                gen.encode_prompt(p)
            except (UnknownWordsError, ValueError) as e:
                bad.append(f"  prompt {i}: {e}")
        if bad:
            raise UsageError("prompts the checkpoint's tokenizer cannot read:\n" + "\n".join(bad))
    except (UsageError, ValueError) as e:
        print(f"sample.py: error: {e}", file=sys.stderr)
        return 2

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    bar = tqdm(total=len(prompts), desc=f"sampling {args.mode}", disable=len(prompts) <= args.batch_size,
               file=sys.stderr)
    t0 = time.perf_counter()
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start: start + args.batch_size]
        for i, res in enumerate(gen.generate(batch, cfg), start=start):
            write_result(res, i, out)
            kinds = "".join({"plan": "P", "draft": "D", "critique": "C", "refine": "R", "refined": "F",
                             "image": "I"}[s.kind] for s in res.stages)
            bar.write(f"[{i}] {res.end_reason:<15} images={res.num_images} stages={kinds or '-'} "
                      f"passes={res.forward_passes} {res.seconds:.2f}s  {res.prompt!r} -> {out / f'{i}.png'}")
        bar.update(len(batch))
    bar.close()
    print(f"{len(prompts)} trajectories in {time.perf_counter() - t0:.1f}s -> {out}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
