"""Training callbacks: sampled trajectories in TensorBoard, and the quick evaluation that
``train/fit.py`` prints at the end.

Both run the real Plan -> Sketch -> Inspect -> Refine loop (procpaint.inference) on the module's
current weights and judge the final image with the world's weight-free detector: the closing eval
with GenEval's rules on held-out prompts of all six tags (procpaint.evaluation.quick), the
trajectory strips exactly (the detected scene satisfies the prompt's scene graph).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import torch

from procpaint.evaluation import geneval
from procpaint.evaluation.quick import contact_sheet, evaluate_model, stratified_metadata
from procpaint.inference import GenerationConfig, Generator, TrajectoryResult, render_strip
from procpaint.io import to_uint8
from procpaint.model.parallel import is_sharded
from procpaint.sequence.tokenizer import TextTokenizer
from procpaint.training.sharding import PARAM_DTYPES, unsharded_model
from procpaint.world import Detector, parse_prompt, satisfies

log = logging.getLogger(__name__)


def judge(result: TrajectoryResult, detector: Detector | None = None) -> bool:
    """Whether the trajectory's final image shows exactly the prompt's scene (False if no image)."""
    image = result.final_image
    if image is None:
        return False
    detector = detector or Detector()
    return satisfies(detector.state(to_uint8(image)), parse_prompt(result.prompt))


@torch.no_grad()
def generate_with(module: L.LightningModule, tokenizer: TextTokenizer, prompts: list[str],
                  config: GenerationConfig, image_size: int) -> list[TrajectoryResult]:
    """Run generation on the module's model (or on ``module`` itself when it is a model, e.g. the
    gathered copy of an FSDP model) and give it back in the mode it was in."""
    model = module.model if isinstance(module, L.LightningModule) else module
    was_training = model.training
    try:
        return Generator(model, tokenizer, image_size=image_size).generate(prompts, config)
    finally:
        model.train(was_training)


def quick_eval(module, tokenizer: TextTokenizer, *, image_size: int, config: GenerationConfig, n: int = 48,
               seed: int = 0, sheet: str | Path | None = None) -> dict:
    """GenEval-rule accuracy on ``n`` held-out prompts spread over the six tags (the closing eval of
    ``train/fit.py``); ``sheet``: also write their contact sheet there (PNG)."""
    model = module.model if isinstance(module, L.LightningModule) else module
    metas = stratified_metadata(n, seed=seed)
    summary, results, verdicts = evaluate_model(model, tokenizer, metas, replace(config, seed=seed),
                                                image_size=image_size)
    if sheet is not None:
        contact_sheet(results, verdicts, sheet)
    return {"geneval": summary, "prompts": len(metas), "distinct_prompts": len({m["prompt"] for m in metas}),
            "drew_image": float(np.mean([r.final_image is not None for r in results])),
            "forward_passes": float(np.mean([r.forward_passes for r in results])),
            "sampling": {"mode": config.mode, "num_steps": config.num_steps,
                         "cfg_text_scale": config.cfg_text_scale, "cfg_image_scale": config.cfg_image_scale}}


def default_val_prompts(seed: int = 0) -> list[str]:
    """The TensorBoard trajectory prompts when none are configured: the closing eval's first prompt
    of each GenEval tag."""
    seen: dict[str, str] = {}
    for m in stratified_metadata(len(geneval.GENEVAL_TAGS), seed=seed):
        seen.setdefault(m["tag"], m["prompt"])
    return list(seen.values())


class TrajectoryLogger(L.Callback):
    """Every ``every_n_steps``: generate the validation prompts' trajectories and log each as an image
    strip (plan text under each draft/refined image), its full text, and the detector's verdict."""

    def __init__(self, prompts: list[str], tokenizer: TextTokenizer, *, image_size: int, every_n_steps: int,
                 config: GenerationConfig | None = None):
        self.prompts, self.tokenizer, self.image_size = list(prompts), tokenizer, image_size
        self.every, self.config = every_n_steps, config or GenerationConfig(num_steps=20)
        self.detector = Detector()
        self._last = -1

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args) -> None:
        step = trainer.global_step
        sharded = is_sharded(module.model)        # FSDP: every rank takes part in the gathering
        if self.every <= 0 or step % self.every or step == self._last:
            return
        if not (trainer.is_global_zero or sharded):
            return
        self._last = step
        writer = getattr(trainer.logger, "experiment", None)
        if writer is None or not hasattr(writer, "add_image"):
            return
        if sharded:      # rank 0 generates on the gathered weights while the others wait
            model = unsharded_model(module.model, dtype=PARAM_DTYPES.get(str(trainer.precision)))
            if model is not None:
                self._log(writer, generate_with(model, self.tokenizer, self.prompts, self.config,
                                                self.image_size), step)
            del model
            trainer.strategy.barrier("trajectory_logger")
            return
        self._log(writer, generate_with(module, self.tokenizer, self.prompts, self.config, self.image_size),
                  step)

    def _log(self, writer, results: list[TrajectoryResult], step: int) -> None:
        right = []
        for i, r in enumerate(results):
            strip = np.asarray(render_strip(r))
            writer.add_image(f"trajectory/{i}", strip, step, dataformats="HWC")
            ok = judge(r, self.detector)
            right.append(ok)
            lines = [f"**prompt**: {r.prompt}", f"**end**: {r.end_reason}, **detector**: "
                     f"{'right' if ok else 'wrong'}"]
            lines += [f"- {s.kind}: {s.text}" for s in r.stages if s.text is not None]
            writer.add_text(f"trajectory/{i}", "  \n".join(lines), step)
        writer.add_scalar("trajectory/detector_accuracy", float(np.mean(right)), step)
