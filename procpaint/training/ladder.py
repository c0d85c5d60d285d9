"""The sanity ladder: rungs to climb before any recipe search (``python train/ladder.py``).

1. ``overfit``: a handful of single-object samples, trained single-pass until memorised; then the
   exported model, loaded the way users load it (``load_generator``), must regenerate each sample's
   picture from its prompt: GenEval's rules pass and the pixels match. A failure here is a bug in
   the training or inference path (codec, masks, flow convention, sampler), not a recipe problem.
2. ``single``: single-object data only; held-out single-object prompts scored with GenEval rules.
3. ``default``: the full default run (``train/fit.py``'s closing eval).

If a rung fails, the bug is below it. Rungs 1 and 2 run through :func:`fit_probe`, which the recipe
probes (benchmarks/probe_recipe.py) share.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def build_probe_data(out: Path, tags: list[str], samples: int, image_size: int, seed: int = 0,
                     subsets=("multiturn",), **knobs) -> Path:
    """A procedural dataset of ``tags`` only, cached under ``out`` by its arguments."""
    from procpaint.datasets import BuildConfig, build_dataset
    from procpaint.datasets.config import BUILDER_REVISION
    from procpaint.world.prompts import TAGS

    weights = {t: (1.0 if t in tags else 0.0) for t in TAGS}
    key = f"{'-'.join(sorted(tags))}-n{samples}-px{image_size}-s{seed}-r{BUILDER_REVISION}-" + "-".join(
        f"{k}{v}" for k, v in sorted(knobs.items()))
    root = Path(out) / key
    if (root / "manifest.json").is_file():
        return root
    sizes = {s: (samples if s in subsets else 0) for s in ("multiturn", "conflict", "alignment")}
    cfg = BuildConfig(seed=seed, image_size=image_size, tag_weights=weights, shard_size=max(8, samples // 4),
                     **sizes, **knobs)
    build_dataset(root, subsets=tuple(subsets), cfg=cfg, workers=1, progress=False)
    return root


def fit_probe(data_root: Path, overrides: list[str], *, steps: int, out: Path, name: str,
              config: Path = ROOT / "train/configs/default.yaml"):
    """``train/fit.py`` on ``data_root`` for ``steps`` steps with ``overrides``; no closing eval or
    trajectory logging (the caller scores). -> (FitResult, Config, seconds)."""
    from procpaint.config import load_config
    from procpaint.training.run import fit

    cfg = load_config(config, [
        f"data.root={data_root}", f"trainer.max_steps={steps}", f"trainer.default_root_dir={out}",
        f"logging.name={name}", "logging.final_eval_prompts=0", "logging.trajectory_every_n_steps=0",
        "trainer.enable_progress_bar=false", f"logging.checkpoint_every_n_steps={max(steps, 1)}",
        "trainer.val_check_interval=null", *overrides])
    t0 = time.perf_counter()
    result = fit(cfg)
    return result, cfg, time.perf_counter() - t0


@dataclass
class RungResult:
    rung: str
    passed: bool
    metrics: dict = field(default_factory=dict)
    sheet: str | None = None

    def line(self) -> str:
        nums = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in self.metrics.items())
        return f"rung {self.rung}: {'PASS' if self.passed else 'FAIL'} ({nums})"


# What rung 1 trains with: single-pass, no EMA (it would lag a short run), no dropout (every sample
# must be regenerated from its prompt), a shift that trains the noisy end where the prompt matters.
OVERFIT_OVERRIDES = ["data.trajectory=final_only", "data.subsets=[multiturn]", "data.p_drop_text=0",
                     "optim.ema_decay=0", "optim.warmup_steps=10", "loss.timestep_shift=3"]


def overfit(out: Path, *, samples: int = 8, steps: int = 300, image_size: int | None = None,
            overrides: list[str] = (), max_pixel_error: float = 0.05, num_steps: int = 30) -> RungResult:
    """Rung 1 (module docstring). Passes when every sample is regenerated right by GenEval's rules
    and the mean absolute pixel error (images in [-1, 1]) is below ``max_pixel_error``."""
    from procpaint.datasets import TrajectoryDataset
    from procpaint.evaluation import geneval
    from procpaint.evaluation.quick import contact_sheet, score_results
    from procpaint.inference import GenerationConfig, load_generator
    from procpaint.world import parse_prompt

    overrides = [*OVERFIT_OVERRIDES, *overrides]
    if image_size is None:
        from procpaint.config import load_config

        image_size = load_config(ROOT / "train/configs/default.yaml", list(overrides)).data.image_size
    out = Path(out)
    root = build_probe_data(out / "data", ["single_object"], samples, image_size)
    result, cfg, fit_s = fit_probe(root, [f"data.image_size={image_size}", *overrides], steps=steps,
                                   out=out / "runs", name="overfit")
    prompts, targets = [], []
    for s in TrajectoryDataset(root, subsets=("multiturn",), image_size=image_size, shuffle=False):
        prompts.append(s.meta["prompt"])
        targets.append([seg.image for seg in s.segments if hasattr(seg, "image") and seg.loss][-1])
    gen = load_generator(Path(result.log_dir) / "export")
    results = gen.generate(prompts, GenerationConfig(mode="single-pass", num_steps=num_steps))
    metas = [geneval.entry("single_object", parse_prompt(p)) for p in prompts]
    verdicts = score_results(results, metas)
    errors = [float((r.final_image - t).abs().mean()) for r, t in zip(results, targets)]
    sheet = Path(result.log_dir) / "overfit.png"
    contact_sheet(results, verdicts, sheet, cols=min(8, len(results)))
    metrics = {"samples": len(prompts), "regenerated": float(np.mean(verdicts)),
               "pixel_error": float(np.mean(errors)), "steps": steps, "fit_s": round(fit_s, 1)}
    passed = all(verdicts) and metrics["pixel_error"] < max_pixel_error
    return RungResult("overfit", passed, metrics, str(sheet))


def single(out: Path, *, samples: int = 600, steps: int = 300, per_tag: int = 24, overrides: list[str] = (),
           threshold: float = 0.9) -> RungResult:
    """Rung 2: single-object data only, scored on ``per_tag`` held-out single-object prompts."""
    from procpaint.evaluation.quick import contact_sheet, evaluate_model, stratified_metadata
    from procpaint.inference import load_generator

    out = Path(out)
    from procpaint.config import load_config

    image_size = load_config(ROOT / "train/configs/default.yaml", list(overrides)).data.image_size
    root = build_probe_data(out / "data", ["single_object"], samples, image_size)
    single_pass = ["data.trajectory=final_only", "data.subsets=[multiturn]"]
    result, cfg, fit_s = fit_probe(root, [*single_pass, *overrides], steps=steps, out=out / "runs",
                                   name="single")
    gen = load_generator(Path(result.log_dir) / "export")
    metas = stratified_metadata(per_tag, tags=("single_object",))
    summary, results, verdicts = evaluate_model(gen.model, gen.tok, metas,
                                                cfg.sampling.generation_config(mode="single-pass"),
                                                image_size=image_size)
    sheet = Path(result.log_dir) / "single.png"
    contact_sheet(results, verdicts, sheet)
    acc = summary["single_object"]
    return RungResult("single", acc >= threshold, {"single_object": acc, "prompts": len(metas),
                                                   "steps": steps, "fit_s": round(fit_s, 1)}, str(sheet))


def default(out: Path, *, overrides: list[str] = (), threshold: float = 0.5) -> RungResult:
    """Rung 3: the default run itself, judged by its closing eval."""
    from procpaint.config import load_config
    from procpaint.training.run import fit

    cfg = load_config(ROOT / "train/configs/default.yaml", [f"trainer.default_root_dir={Path(out) / 'runs'}",
                                                            *overrides])
    t0 = time.perf_counter()
    result = fit(cfg)
    ev = result.evaluation or {}
    overall = float(ev.get("geneval", {}).get("overall", float("nan")))
    return RungResult("default", overall >= threshold,
                      {"overall": overall, "fit_s": round(time.perf_counter() - t0, 1)},
                      str(Path(result.log_dir) / "quick_eval.png"))


RUNGS = {"overfit": overfit, "single": single, "default": default}
