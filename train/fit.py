"""Train procpaint.

    python train/fit.py                                  # train/configs/default.yaml
    python train/fit.py --config train/configs/debug.yaml trainer.max_steps=3
    python train/fit.py ckpt_path=runs/default/version_0/checkpoints/last.ckpt   # resume

Overrides are OmegaConf dot-list ``key=value`` pairs; an unknown key or a wrong type exits with
status 2 and a message naming the key, as do a bad ``ckpt_path`` and data the packer cannot use.
A run stopped by non-finite losses exits 1 (its checkpoints hold the last good weights); SIGTERM
or SIGINT ends any phase at once (exit 1, or 128 + the signal's number outside Lightning's loop).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "train" / "configs" / "default.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config file")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (OmegaConf dot-list)")
    args = parser.parse_args(argv)

    from procpaint.config import ConfigError, load_config, to_yaml

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(cfg))
        return 0

    from procpaint.sequence.packing import NothingToPackError
    from procpaint.sequence.plan import RecordError
    from procpaint.training.module import NonFiniteLossError
    from procpaint.training.run import fit

    # Lightning's own SIGTERM handler only sets a flag read between batches, which never comes
    # when a phase is stuck (data preparation, a stream that yields nothing): raise instead.
    # Lightning treats KeyboardInterrupt as a graceful interrupt (teardown, children killed).
    signal.signal(signal.SIGTERM, _terminate)
    try:
        fit(cfg)
    except NonFiniteLossError as exc:      # stopped safely: no NaN weights were written
        print(f"training stopped: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, NothingToPackError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RecordError as exc:          # (from a DataLoader worker the message ends with the original)
        line = [ln for ln in str(exc).splitlines() if ln.strip()][-1].split("RecordError: ")[-1]
        print(f"data error: {line}; check the dataset with `python data/build.py validate DIR`",
              file=sys.stderr)
        return 2
    except Terminated as exc:
        print(f"fit.py: stopped by {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("fit.py: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is so that any phase of a run ends promptly."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum, frame):
    raise Terminated(signum)


if __name__ == "__main__":
    sys.exit(main())
