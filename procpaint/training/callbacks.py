"""Training callbacks: sampled trajectories in TensorBoard.

They run the real Plan -> Sketch -> Inspect -> Refine loop (procpaint.inference) on the module's
current weights and judge each final image exactly (procpaint.evaluation.quick.exact_verdict: the
detected scene satisfies the prompt's scene graph). The closing eval ``train/fit.py`` prints is
procpaint.evaluation.quick.quick_eval: scoring lives in evaluation/.
"""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
import torch

from procpaint.evaluation import geneval
from procpaint.evaluation.quick import exact_verdict, stratified_metadata
from procpaint.inference import GenerationConfig, Painter, TrajectoryResult, render_strip
from procpaint.model.parallel import is_sharded
from procpaint.sequence.tokenizer import TextTokenizer
from procpaint.training.sharding import PARAM_DTYPES, unsharded_model
from procpaint.world import Detector

log = logging.getLogger(__name__)


@torch.no_grad()
def generate_with(module: L.LightningModule, tokenizer: TextTokenizer, prompts: list[str],
                  config: GenerationConfig, image_size: int) -> list[TrajectoryResult]:
    """Run generation on the module's model (or on ``module`` itself when it is a model, e.g. the
    gathered copy of an FSDP model) and give it back in the mode it was in."""
    model = module.model if isinstance(module, L.LightningModule) else module
    was_training = model.training
    try:
        return Painter(model, tokenizer, image_size=image_size).generate(prompts, config)
    finally:
        model.train(was_training)


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
            ok = exact_verdict(r, self.detector)
            right.append(ok)
            lines = [f"**prompt**: {r.prompt}", f"**end**: {r.end_reason}, **detector**: "
                     f"{'right' if ok else 'wrong'}"]
            lines += [f"- {s.kind}: {s.text}" for s in r.stages if s.text is not None]
            writer.add_text(f"trajectory/{i}", "  \n".join(lines), step)
        writer.add_scalar("trajectory/detector_accuracy", float(np.mean(right)), step)
