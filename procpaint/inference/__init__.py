"""Process-driven generation: the Plan -> Sketch -> Inspect -> Refine loop, KV cache, flow sampler, CFG.

    gen = load_generator("runs/debug/version_0/checkpoints/last.ckpt")      # or an export/ directory
    results = gen.generate(["a photo of a red circle"], GenerationConfig(num_steps=20))
    save_strip(results[0], "out/0.png")
"""

from procpaint.inference.generator import Generator
from procpaint.inference.loading import CheckpointError, load_generator, resolve_device
from procpaint.inference.render import render_strip, save_strip
from procpaint.inference.types import GenerationConfig, Stage, TrajectoryResult

__all__ = ["CheckpointError", "GenerationConfig", "Generator", "Stage", "TrajectoryResult", "load_generator",
           "render_strip", "resolve_device", "save_strip"]
