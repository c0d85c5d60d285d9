"""The sanity ladder: climb it before any recipe search; if a rung fails, the bug is below it.

    python train/ladder.py                      # rungs overfit and single (~10 min on 2 CPU cores)
    python train/ladder.py --rungs overfit      # the quickest: does the model memorise 8 pictures?
    python train/ladder.py --rungs default      # the full default run, judged by its closing eval
    python train/ladder.py ... key=value        # config overrides for every rung

Rungs (procpaint/training/ladder.py): ``overfit`` trains 8 single-object samples single-pass and
regenerates them through ``load_generator`` (GenEval rules + pixel error); ``single`` trains on
single-object data and scores held-out single-object prompts; ``default`` is ``train/fit.py``.
Each rung prints one PASS/FAIL line with its numbers and writes a contact sheet; exit status 1
when a rung fails (later rungs are then skipped).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rungs", default="overfit,single", help="comma-separated: overfit, single, default")
    ap.add_argument("--out", default="runs/ladder", help="data, runs and sheets go here")
    ap.add_argument("--steps", type=int, default=None, help="training steps of rungs overfit/single")
    ap.add_argument("overrides", nargs="*", help="config overrides (key=value) for every rung")
    args = ap.parse_args(argv)
    import torch

    from procpaint.training import ladder

    rungs = [r.strip() for r in args.rungs.split(",") if r.strip()]
    unknown = [r for r in rungs if r not in ladder.RUNGS]
    if unknown:
        print(f"ladder.py: error: unknown rung(s) {unknown}; choose from {list(ladder.RUNGS)}",
              file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for name in rungs:
        kw = {"overrides": list(args.overrides)}
        if args.steps is not None and name != "default":
            kw["steps"] = args.steps
        res = ladder.RUNGS[name](Path(args.out) / name, **kw)
        print(res.line() + (f"  sheet: {res.sheet}" if res.sheet else ""), flush=True)
        if not res.passed:
            print(f"ladder.py: rung {name} failed; fix what lies below it before climbing on",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
