"""Contract of the inference room: generation settings and results.

``procpaint.inference.generate`` (the Plan -> Sketch -> Inspect -> Refine loop) returns one
:class:`TrajectoryResult` per prompt; evaluation, sampling and the training callback consume them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

Mode = Literal["process", "single-pass", "planner"]
EndReason = Literal["eos", "max_rounds", "max_text_tokens", "no_image", "error"]


@dataclass
class GenerationConfig:
    mode: Mode = "process"            # process: full loop; single-pass: prompt -> image; planner: plan + sketch
    max_rounds: int = 5               # paper's maximum number of images
    max_text_tokens: int = 64         # per text segment
    num_steps: int = 50               # flow timesteps (linspace(1, 0, num_steps) -> num_steps - 1 Euler steps)
    timestep_shift: float = 3.0       # BAGEL's inference shift
    cfg_text_scale: float = 1.0       # 1.0 disables text CFG
    cfg_image_scale: float = 1.0      # 1.0 disables image CFG
    cfg_interval: tuple[float, float] = (0.0, 1.0)  # apply CFG only for t in this interval
    cfg_renorm: Literal["none", "global", "token"] = "global"
    temperature: float = 0.0          # 0: greedy
    top_p: float = 1.0
    constrained: bool = True          # enforce <ins>/<des> in plans and closed <refine> tags
    use_cache: bool = True            # KV cache across the trajectory
    seed: int = 0


@dataclass
class Stage:
    kind: Literal["plan", "draft", "critique", "refine", "refined", "image"]
    text: str | None = None                  # for text stages
    image: torch.Tensor | None = None        # (3, H, W) float32 in [-1, 1], for image stages
    tokens: int = 0                          # tokens generated (text) or latent tokens (image)
    forward_passes: int = 0
    seconds: float = 0.0


@dataclass
class TrajectoryResult:
    prompt: str
    mode: Mode
    stages: list[Stage] = field(default_factory=list)
    end_reason: EndReason = "eos"
    forward_passes: int = 0
    seconds: float = 0.0

    @property
    def final_image(self) -> torch.Tensor | None:
        """(3, H, W) in [-1, 1]: the last image of the trajectory (None if it drew none)."""
        images = [s.image for s in self.stages if s.image is not None]
        return images[-1] if images else None
