"""Contract of the inference room: generation settings and results.

``procpaint.inference.load_generator(path).generate(prompts, config)`` (the Plan -> Sketch ->
Inspect -> Refine loop) returns one :class:`TrajectoryResult` per prompt; evaluation, sampling and
the training callback consume them.

End reasons: ``eos`` the model ended the trajectory after drawing (single-pass: its one image is
drawn); ``no_image`` it ended before drawing anything; ``max_rounds`` it wanted another image after
``max_rounds`` images; ``max_text_tokens`` a text stage ran past ``max_text_tokens`` without a
boundary (runaway text, e.g. never emitting ``<|vision_start|>``); ``error`` reserved for callers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import torch

Mode = Literal["process", "single-pass", "planner"]
EndReason = Literal["eos", "max_rounds", "max_text_tokens", "no_image", "error"]


@dataclass
class GenerationConfig:
    mode: Mode = "process"            # process: full loop; single-pass: prompt -> image; planner: no inspect
    max_rounds: int = 5               # paper's maximum number of images
    max_text_tokens: int = 64         # per text segment
    num_steps: int = 50               # linspace(1, 0, num_steps): num_steps - 1 Euler steps
    timestep_shift: float = 3.0       # BAGEL's inference shift
    cfg_text_scale: float = 1.0       # 1.0 disables text CFG
    cfg_image_scale: float = 1.0      # 1.0 disables image CFG
    cfg_interval: tuple[float, float] = (0.0, 1.0)  # apply CFG only for t in this interval
    cfg_renorm: Literal["none", "global", "token"] = "global"
    cfg_renorm_min: float = 0.0       # lower clamp of the renorm factor (BAGEL's cfg_renorm_min)
    sde_noise: float = 0.0            # share eta of the noise made fresh at each flow step (0: Euler ODE)
    temperature: float = 0.0          # 0: greedy
    top_p: float = 1.0
    constrained: bool = True          # enforce <ins>/<des> in plans and closed <refine> tags
    use_cache: bool = True            # KV cache across the trajectory
    seed: int = 0
    image_size: int | None = None     # pixels per side of generated images; None: the training size

    def validate(self) -> None:
        """ValueError naming the field when a setting is out of range."""
        if self.mode not in ("process", "single-pass", "planner"):
            raise ValueError(f"mode must be process, single-pass or planner, got {self.mode!r}")
        if self.num_steps < 2:
            raise ValueError(f"num_steps must be >= 2 (linspace(1, 0, num_steps)), got {self.num_steps}")
        if self.max_rounds < 1 or self.max_text_tokens < 1:
            raise ValueError(f"max_rounds and max_text_tokens must be >= 1, got {self.max_rounds}, "
                             f"{self.max_text_tokens}")
        if not self.timestep_shift > 0:
            raise ValueError(f"timestep_shift must be > 0, got {self.timestep_shift}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got {self.temperature}, "
                             f"{self.top_p}")
        if not 0.0 <= self.sde_noise <= 1.0:
            raise ValueError(f"sde_noise must be in [0, 1], got {self.sde_noise}")
        if self.cfg_renorm not in ("none", "global", "token"):
            raise ValueError(f"cfg_renorm must be none, global or token, got {self.cfg_renorm!r}")
        lo, hi = self.cfg_interval
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"cfg_interval must satisfy 0 <= lo <= hi <= 1, got {self.cfg_interval}")


@dataclass(eq=False)   # identity equality: a generated __eq__ would compare image tensors (ambiguous)
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
    forward_passes: int = 0           # model calls this trajectory took part in (CFG branches ride along)
    seconds: float = 0.0              # wall time of those calls (batched: shared calls count fully)
    model_tokens: int = 0             # query tokens fed through the model, all branches (cache vs recompute)
    seed: int = 0

    @property
    def num_images(self) -> int:
        return sum(s.image is not None for s in self.stages)

    def to_dict(self, image_paths: dict[int, str] | None = None) -> dict:
        """JSON-able dict; ``image_paths`` maps stage index -> where that stage's image was written."""
        paths = image_paths or {}
        stages = [{"kind": s.kind, "text": s.text, "image": paths.get(i) if s.image is not None else None,
                   "tokens": s.tokens, "forward_passes": s.forward_passes, "seconds": round(s.seconds, 6)}
                  for i, s in enumerate(self.stages)]
        return {"prompt": self.prompt, "mode": self.mode, "end_reason": self.end_reason, "seed": self.seed,
                "images": self.num_images, "forward_passes": self.forward_passes,
                "model_tokens": self.model_tokens, "seconds": round(self.seconds, 6), "stages": stages}

    def to_json(self, image_paths: dict[int, str] | None = None, indent: int | None = 2) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(image_paths), indent=indent)

    @property
    def final_image(self) -> torch.Tensor | None:
        """(3, H, W) in [-1, 1]: the last image of the trajectory (None if it drew none)."""
        images = [s.image for s in self.stages if s.image is not None]
        return images[-1] if images else None
