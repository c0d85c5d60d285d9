"""Train procpaint.

    python train/fit.py                                  # train/configs/default.yaml
    python train/fit.py --config train/configs/debug.yaml trainer.max_steps=3
    python train/fit.py ckpt_path=runs/default/version_0/checkpoints/last.ckpt   # resume

Overrides are OmegaConf dot-list ``key=value`` pairs; an unknown key or a wrong type exits with
status 2 and a message naming the key.
"""

from __future__ import annotations

import argparse
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

    from procpaint.training.module import NonFiniteLossError
    from procpaint.training.run import fit

    try:
        fit(cfg)
    except NonFiniteLossError as exc:      # stopped safely: no NaN weights were written
        print(f"training stopped: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
