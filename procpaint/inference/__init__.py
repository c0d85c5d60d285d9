"""Process-driven generation: the Plan -> Sketch -> Inspect -> Refine loop, KV cache, flow sampler, CFG.

    gen = load_generator("runs/debug/version_0/checkpoints/last.ckpt")      # or an export/ directory
    results = gen.generate(["a photo of a red circle"], GenerationConfig(num_steps=20))
    save_strip(results[0], "out/0.png")
"""

from procpaint.inference.loading import CheckpointError, load_generator, resolve_device
from procpaint.inference.painter import Painter
from procpaint.inference.render import render_strip, save_strip
from procpaint.inference.types import GenerationConfig, Stage, TrajectoryResult

Generator = Painter  # the class's name until 2026-12-03 (beside torch.Generator); kept for user scripts

__all__ = ["CheckpointError", "GenerationConfig", "Generator", "Painter", "Stage", "TrajectoryResult",
           "load_generator", "render_strip", "resolve_device", "save_strip"]
