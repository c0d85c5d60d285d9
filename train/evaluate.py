"""Evaluate procpaint checkpoints on the GenEval and knowledge benchmarks of the painting world.

    python train/evaluate.py --ckpt runs/x/last.ckpt [--benchmark geneval|knowledge|all]
                             [--mode process|single-pass|planner|oracle|all] [--images-per-prompt 4]
                             [--out eval] [--limit N] [--device cpu|cuda]
    python train/evaluate.py --ckpt process=runs/a.ckpt --ckpt single=runs/b.ckpt ...   # one row each
    python train/evaluate.py --score DIR --metadata FILE      # score images in GenEval's layout
    python train/evaluate.py --write-metadata geneval|knowledge --out FILE   # the prompt sets
    python train/evaluate.py --ckpt ... --benchmark knowledge --knowledge-split trained   # facts seen in
                                                                  # training prompts (knowledge-trained/)
    python train/evaluate.py --tables DIR                       # rebuild summary.* from scored folders
    python train/evaluate.py --ckpt ... --diagnostics           # + process diagnostics (keeps stages)

Generation writes ``<out>/<run>/<mode>/<benchmark>/<00000>/samples/<0000>.png`` (GenEval's layout;
existing images are kept, so an interrupted run resumes), then ``results.jsonl`` beside them and
``<out>/summary.json`` + ``<out>/summary.md`` with the paper-style tables for every row found under
``<out>``. ``--keep-stages`` also keeps every stage image (``<00000>/stages/``); ``--diagnostics``
keeps them in the modes that plan (process, planner) and writes ``diagnostics.json``,
``diagnostics.md`` and ``accuracy_by_round.png`` in those folders (procpaint.evaluation.diagnostics),
plus a section of summary.md. Exit status 2 on bad arguments or paths, with a message naming them.

The knowledge benchmark asks about the **held-out facts** by default (procpaint.evaluation.knowledge:
stated in the training data's fact corpus, never in a training image prompt), in the folder
``knowledge``; ``--knowledge-split trained`` asks about the facts training prompts used, in
``knowledge-trained``, so the two sit side by side in the tables (column "Facts").
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:          # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

# oracle: process mode with the world's exact judge as the Inspect step (procpaint.evaluation.oracle)
MODES = ("process", "single-pass", "planner", "oracle")
DIAGNOSED_MODES = ("process", "planner", "oracle")       # the modes that write plans: --diagnostics
BENCHMARKS = ("geneval", "knowledge")
KNOWLEDGE_SPLITS = ("heldout", "trained")


class UsageError(Exception):
    pass


def load_generator(ckpt: str, device: str):
    """The real generator, imported lazily so ``--score`` never needs the inference room."""
    try:
        from procpaint.inference import load_generator as _load
    except ImportError as exc:
        raise UsageError(f"generation needs procpaint.inference.load_generator, which is not importable "
                         f"({exc}); score existing images with --score DIR --metadata FILE") from exc
    return _load(ckpt, device)


def metadata_for(benchmark: str, knowledge_prompts: int = 500,
                 knowledge_split: str = "heldout") -> list[dict]:
    from procpaint.evaluation import geneval, knowledge

    if benchmark == "geneval":
        return geneval.default_metadata()
    return knowledge.generate_metadata(knowledge_prompts, split=knowledge_split)


def bench_folder(benchmark: str, knowledge_split: str = "heldout") -> str:
    """``knowledge`` holds the held-out facts' results; another split gets ``knowledge-<split>``."""
    if benchmark != "knowledge" or knowledge_split == "heldout":
        return benchmark
    return f"knowledge-{knowledge_split}"


def split_label(benchmark: str, knowledge_split: str) -> str:
    from procpaint.evaluation.knowledge import SPLIT_NAMES

    return f" ({SPLIT_NAMES[knowledge_split]} facts)" if benchmark == "knowledge" else ""


def parse_ckpts(items: list[str]) -> list[tuple[str, Path]]:
    """``PATH`` or ``NAME=PATH`` -> [(run name, path)]; names default to the checkpoint's stem."""
    out = []
    for item in items:
        name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        p = Path(path)
        if not p.exists():
            raise UsageError(f"--ckpt {item}: checkpoint not found: {p}")
        name = name or (p.parent.name + "-" + p.stem if p.stem in ("last", "best") else p.stem)
        if any(name == n for n, _ in out):
            raise UsageError(f"--ckpt: run name {name!r} given twice; use NAME=PATH to tell them apart")
        out.append((name, p))
    return out


def check_vocabulary(name: str, generator, bench: str, meta: list[dict]) -> None:
    """UsageError naming the words of ``bench``'s prompts that the checkpoint's tokenizer lacks."""
    encode = getattr(generator, "encode_prompt", None)
    if encode is None:                            # injected fakes take any text
        return
    from procpaint.sequence.tokenizer import UnknownWordsError

    unknown: set[str] = set()
    for m in meta:
        try:
            encode(m["prompt"])
        except UnknownWordsError as exc:
            unknown.update(exc.words)
    if unknown:
        words = sorted(unknown)
        raise UsageError(f"{name}: the checkpoint's tokenizer lacks {len(words)} word(s) of the {bench} "
                         f"prompts ({', '.join(words[:12])}{', ...' if len(words) > 12 else ''}); it was "
                         f"trained on data whose tokenizer predates them: rebuild the data and retrain, or "
                         f"evaluate with --benchmark geneval")


def evaluate(runs: list[tuple[str, object]], out: Path, *, benchmarks=BENCHMARKS, modes=MODES,
             images_per_prompt: int = 4, limit: int | None = None, batch_size: int = 16, seed: int = 0,
             workers: int = 1, sampling=None, show_progress: bool = True, keep_stages: bool = False,
             diagnostics: bool = False, knowledge_split: str = "heldout") -> list[dict]:
    """Generate + score every (run, mode, benchmark); ``runs`` holds (name, generator) pairs.

    ``sampling``: parsed sampling flags (procpaint.inference.options); unset ones come from each
    checkpoint's training config. ``keep_stages``: keep every stage image; ``diagnostics``: keep
    them in :data:`DIAGNOSED_MODES` and write the process diagnostics of those folders.
    ``knowledge_split``: the facts the knowledge benchmark asks about (module docstring).

    The generator objects are injected (tests pass fakes); returns the summary rows.
    """
    from procpaint.evaluation import diagnostics as diag
    from procpaint.evaluation import runner, tables
    from procpaint.evaluation.layout import stratified
    from procpaint.evaluation.oracle import OracleInspector
    from procpaint.inference.options import generation_config

    if knowledge_split not in KNOWLEDGE_SPLITS:
        raise UsageError(f"knowledge split must be one of {KNOWLEDGE_SPLITS}, got {knowledge_split!r}")
    metas = {b: stratified(metadata_for(b, knowledge_split=knowledge_split), limit)   # --limit: every tag
             for b in benchmarks}
    for name, generator in runs:                  # every prompt readable before anything runs
        for bench, meta in metas.items():
            check_vocabulary(name, generator, bench, meta)
    for name, generator in runs:
        for mode in modes:
            try:
                cfg = generation_config(sampling, getattr(generator, "sampling", None),
                                        mode="process" if mode == "oracle" else mode, seed=seed)
            except ValueError as exc:
                raise UsageError(str(exc)) from exc
            diagnose = diagnostics and mode in DIAGNOSED_MODES
            for bench, meta in metas.items():
                folder = Path(out) / name / mode / bench_folder(bench, knowledge_split)
                stats = runner.generate_dir(generator, meta, folder, cfg, images_per_prompt=images_per_prompt,
                                            batch_size=batch_size, show_progress=show_progress,
                                            workers=workers, keep_stages=keep_stages or diagnose,
                                            critic=OracleInspector() if mode == "oracle" else None)
                print(f"{name}/{mode}/{bench}{split_label(bench, knowledge_split)}: generated "
                      f"{stats['generated']}, kept {stats['skipped']}", file=sys.stderr)
                runner.score_dir(folder, meta, show_progress=show_progress, workers=workers)
                if diagnose:
                    diag.write(folder, diag.diagnose(folder, meta, workers=workers,
                                                     show_progress=show_progress))
    rows = tables.collect(out)
    tables.write_summary(out, rows)
    return rows


def score(folder: Path, metadata_file: Path, limit: int | None, show_progress: bool,
          workers: int = 1, diagnostics: bool = False) -> dict:
    from procpaint.evaluation import diagnostics as diag
    from procpaint.evaluation import layout, runner, tables

    if not Path(folder).is_dir():
        raise UsageError(f"--score {folder}: not a directory")
    try:
        meta = layout.read_jsonl(metadata_file)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"--metadata: {exc}") from exc
    if not meta:
        raise UsageError(f"--metadata {metadata_file}: no prompts in the file")
    if runner.benchmark_of(meta) == "geneval":
        try:
            runner.check_geneval_metadata(metadata_file)
        except ValueError as exc:
            raise UsageError(f"--metadata {exc}") from exc
    try:
        results = runner.score_dir(folder, meta, limit=limit, show_progress=show_progress, workers=workers)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    bench = runner.benchmark_of(meta)
    summary = runner.summarize(bench, results)
    row = {"run": Path(folder).name, "mode": "-", "benchmark": bench, "scores": summary, "cost": {},
           "folder": str(folder)}
    if diagnostics:                                # the folder's trajectories must have kept their stages
        try:
            found = diag.diagnose(folder, meta[:limit] if limit else meta, workers=workers,
                                  show_progress=show_progress)
        except FileNotFoundError as exc:
            raise UsageError(f"--diagnostics: {exc}") from exc
        diag.write(folder, found)
        row["diagnostics"] = diag.headline(found)
    tables.write_summary(folder, [row], {"metadata": str(metadata_file)})
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", action="append", default=[], help="checkpoint, or NAME=PATH (repeatable)")
    ap.add_argument("--benchmark", choices=[*BENCHMARKS, "all"], default="all")
    ap.add_argument("--mode", choices=[*MODES, "all"], default="process")
    ap.add_argument("--images-per-prompt", type=int, default=4, help="GenEval uses 4")
    ap.add_argument("--out", type=Path, default=Path("eval"), help="output directory (or file)")
    ap.add_argument("--limit", type=int, help="only N prompts of each benchmark (round-robin over tags)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per generate() call")
    ap.add_argument("--workers", type=int, default=0,
                    help="generating processes (0: one per CPU core with --device cpu, 1 with cuda); "
                         "batches and seeds do not depend on it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--score", type=Path, help="score the images in this GenEval-layout folder")
    ap.add_argument("--metadata", type=Path, help="evaluation_metadata.jsonl for --score")
    ap.add_argument("--write-metadata", choices=BENCHMARKS, help="write a benchmark's prompt set to --out")
    ap.add_argument("--knowledge-split", choices=KNOWLEDGE_SPLITS, default="heldout",
                    help="facts the knowledge benchmark asks about: heldout (default; in the fact corpus, "
                         "never in a training image prompt) or trained (folder knowledge-trained)")
    ap.add_argument("--tables", type=Path, help="rebuild summary.json/md from scored folders under DIR")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--keep-stages", action="store_true",
                    help="also write every stage image of a trajectory (<00000>/stages/)")
    ap.add_argument("--diagnostics", action="store_true",
                    help="process diagnostics (plan, draft, critique, refine, accuracy by round) of the "
                         "process and planner folders; keeps their stages")
    from procpaint.inference.options import add_sampling_args

    add_sampling_args(ap)
    args = ap.parse_args(argv)
    show = not args.quiet
    try:
        if args.limit is not None and args.limit < 1:
            raise UsageError(f"--limit must be >= 1, got {args.limit}")
        if args.images_per_prompt < 1:
            raise UsageError(f"--images-per-prompt must be >= 1, got {args.images_per_prompt}")
        actions = (args.ckpt, args.score, args.write_metadata, args.tables)
        if sum(x is not None and x != [] for x in actions) != 1:
            raise UsageError("give exactly one of --ckpt, --score DIR --metadata FILE, --write-metadata, "
                             "--tables")
        if args.write_metadata:
            from procpaint.evaluation.layout import write_jsonl

            write_jsonl(args.out, metadata_for(args.write_metadata, knowledge_split=args.knowledge_split))
            print(f"wrote {args.out}")
            return 0
        if args.tables:
            from procpaint.evaluation import tables

            rows = tables.collect(args.tables)
            if not rows:
                raise UsageError(f"--tables {args.tables}: no <run>/<mode>/<benchmark>/results.jsonl found")
            _, md = tables.write_summary(args.tables, rows)
            print(md.read_text())
            return 0
        workers = args.workers or (1 if args.device == "cuda" else os.cpu_count() or 1)
        if args.score is not None:
            if args.metadata is None:
                raise UsageError("--score DIR needs --metadata FILE (evaluation_metadata.jsonl)")
            summary = score(args.score, args.metadata, args.limit, show, workers, args.diagnostics)
            print((args.score / "summary.md").read_text())
            print(f"overall {summary['overall']:.4f}")
            return 0
        ckpts = parse_ckpts(args.ckpt)
        if args.device == "cuda":
            import torch
            if not torch.cuda.is_available():
                raise UsageError("--device cuda: no CUDA device available")
        runs = [(name, load_generator(str(path), args.device)) for name, path in ckpts]
        rows = evaluate(runs, args.out,
                        benchmarks=BENCHMARKS if args.benchmark == "all" else (args.benchmark,),
                        modes=MODES if args.mode == "all" else (args.mode,),
                        images_per_prompt=args.images_per_prompt, limit=args.limit,
                        batch_size=args.batch_size, seed=args.seed, sampling=args, show_progress=show,
                        workers=workers, keep_stages=args.keep_stages, diagnostics=args.diagnostics,
                        knowledge_split=args.knowledge_split)
        from procpaint.evaluation.tables import markdown
        if args.benchmark in ("knowledge", "all"):
            print(f"knowledge benchmark:{split_label('knowledge', args.knowledge_split)} "
                  f"(folder {bench_folder('knowledge', args.knowledge_split)})")
        print(markdown(rows))
        return 0
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
