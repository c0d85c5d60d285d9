"""Sampling flags shared by ``train/sample.py`` and ``train/evaluate.py``.

Every flag defaults to "what the checkpoint was trained to be sampled with": the ``sampling`` group
of its training config (carried in the Lightning checkpoint and the export's config.yaml, see
:class:`procpaint.config.SamplingConfig`), then :class:`GenerationConfig`'s own default. A flag
given on the command line wins.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from procpaint.inference.types import GenerationConfig

# flag -> GenerationConfig field
FLAGS = {"steps": "num_steps", "timestep_shift": "timestep_shift", "cfg_text": "cfg_text_scale",
         "cfg_image": "cfg_image_scale", "cfg_interval": "cfg_interval", "cfg_renorm": "cfg_renorm",
         "cfg_renorm_min": "cfg_renorm_min", "sde_noise": "sde_noise"}


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """--steps, --timestep-shift, --cfg-text, --cfg-image, --cfg-interval LO HI, --cfg-renorm,
    --cfg-renorm-min, --sde-noise; all default to the checkpoint's training config."""
    g = parser.add_argument_group("sampling (default: the checkpoint's config.yaml `sampling` group)")
    g.add_argument("--steps", "--num-steps", dest="steps", type=int, default=None,
                   help="flow timesteps (N - 1 Euler steps)")
    g.add_argument("--timestep-shift", type=float, default=None, help="shift of the sampling schedule")
    g.add_argument("--cfg-text", type=float, default=None, help="text CFG scale (1 = off)")
    g.add_argument("--cfg-image", type=float, default=None, help="image CFG scale (1 = off)")
    g.add_argument("--cfg-interval", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                   help="apply CFG only for flow times t in [LO, HI]")
    g.add_argument("--cfg-renorm", choices=("none", "global", "token"), default=None,
                   help="rescale the guided velocity to the conditional one's norm")
    g.add_argument("--cfg-renorm-min", type=float, default=None, help="lower clamp of the renorm factor")
    g.add_argument("--sde-noise", type=float, default=None,
                   help="share of the noise made fresh at each flow step, 0-1 (0: the Euler ODE)")


def generation_config(args: argparse.Namespace, checkpoint_sampling: dict | None = None,
                      **fixed) -> GenerationConfig:
    """The GenerationConfig of ``args`` over the checkpoint's sampling settings; ``fixed``: fields
    the caller sets itself (mode, seed, ...). ValueError names a bad flag."""
    known = {f.name for f in fields(GenerationConfig)}
    values = {k: v for k, v in (checkpoint_sampling or {}).items() if k in known}
    if "cfg_interval" in values:
        values["cfg_interval"] = tuple(values["cfg_interval"])
    for flag, name in FLAGS.items():
        v = getattr(args, flag, None)
        if v is not None:
            values[name] = tuple(v) if name == "cfg_interval" else v
    cfg = GenerationConfig(**{**values, **fixed})
    try:
        cfg.validate()
    except ValueError as exc:
        flag = next((f for f, n in FLAGS.items() if n in str(exc)), None)
        raise ValueError(f"--{flag.replace('_', '-')}: {exc}" if flag else str(exc)) from exc
    return cfg
