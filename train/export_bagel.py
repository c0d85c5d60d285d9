"""Export a procpaint checkpoint as a BAGEL-format directory (llm_config.json + ema.safetensors).

    python train/export_bagel.py --ckpt runs/<name>/version_N/export --out bagel_finetuned \\
        [--template /path/to/BAGEL-7B-MoT] [--dtype bf16]

``--template`` (the BAGEL directory the run started from, ``model.init_from``) carries over what
procpaint does not train (the understanding ViT and connector) and copies vit_config.json,
ae.safetensors and the tokenizer files, so BAGEL's own inference code can load the result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="Lightning .ckpt file or export directory")
    p.add_argument("--out", required=True, help="BAGEL-format directory to write")
    p.add_argument("--template", default=None, help="BAGEL directory the fine-tune started from")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="cast the weights (default: as trained)")
    args = p.parse_args(argv)

    from procpaint.inference.loading import CheckpointError, load_generator
    from procpaint.model.bagel_io import BagelFormatError, export_bagel

    try:
        gen = load_generator(args.ckpt)
        template = args.template or gen.model.cfg.init_from
        out = export_bagel(gen.model, Path(args.out), template=template,
                           dtype=DTYPES[args.dtype] if args.dtype else None)
    except (CheckpointError, BagelFormatError, FileNotFoundError) as e:
        print(f"export_bagel: {e}", file=sys.stderr)
        return 1
    gen.tok.save(out / "procpaint_tokenizer.json")     # the tokenizer the fine-tune used
    print(f"BAGEL-format export: {out} (template: {template or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
