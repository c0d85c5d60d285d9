"""Assemble and run training from a :class:`~procpaint.config.Config` (what train/fit.py calls)."""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from procpaint.config import DATA_DERIVED, Config, ConfigError, to_yaml
from procpaint.evaluation.quick import format_summary, quick_eval
from procpaint.io import atomic_write
from procpaint.training.callbacks import TrajectoryLogger, default_val_prompts
from procpaint.training.datamodule import ProcPaintDataModule
from procpaint.training.module import ProcPaintModule, check_finite_weights
from procpaint.training.sharding import fsdp_strategy, is_sharded, unsharded_model

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    log_dir: str                 # TensorBoard run directory
    checkpoint: str | None       # last Lightning checkpoint
    weights: str | None          # exported safetensors (EMA weights when EMA is on)
    val_loss: float | None
    evaluation: dict | None = None  # quick_eval: detector-judged exact-scene accuracy, held-out prompts


# EMAWeightAveraging warns whenever configure_model is overridden; ours is idempotent and EMA is
# only enabled for unsharded strategies (see build_trainer), so the warning carries no information.
warnings.filterwarnings("ignore", message=".*WeightAveraging callback with a model that overrides")


def build_trainer(cfg: Config, *, extra_callbacks=()) -> L.Trainer:
    logger = TensorBoardLogger(save_dir=cfg.trainer.default_root_dir, name=cfg.logging.name,
                               default_hp_metric=False)
    callbacks = [
        ModelCheckpoint(every_n_train_steps=cfg.logging.checkpoint_every_n_steps, save_last=True,
                        save_top_k=-1, filename="step{step:06d}", auto_insert_metric_name=False),
        LearningRateMonitor(logging_interval="step"),
        *extra_callbacks,
    ]
    if cfg.optim.ema_decay > 0 and "fsdp" not in str(cfg.trainer.strategy):  # EMA cannot shard
        callbacks.append(EMAWeightAveraging(decay=cfg.optim.ema_decay))
    trainer_args = asdict(cfg.trainer)
    if trainer_args["strategy"] == "ddp":
        # A pack without images leaves the generation expert unused in that step, so DDP must
        # look for unused parameters (a small cost) rather than hang waiting for their grads.
        trainer_args["strategy"] = "ddp_find_unused_parameters_true"
    if trainer_args["strategy"] == "fsdp":
        # FSDP2 per decoder layer, applied by the module's configure_model (procpaint.training.sharding).
        trainer_args["strategy"] = fsdp_strategy(trainer_args["devices"], trainer_args["num_nodes"])
    if trainer_args["val_check_interval"] is not None:  # steps; the stream has no epochs to align to
        trainer_args["check_val_every_n_epoch"] = None
    return L.Trainer(logger=logger, callbacks=callbacks, max_epochs=-1, **trainer_args)


def export_weights(module: ProcPaintModule, out_dir: Path, model: torch.nn.Module | None = None) -> Path:
    """Write model.safetensors + model_config.json + config.yaml + tokenizer.json: everything
    sampling and evaluation need, without Lightning. The export is written whole into a temporary
    folder beside ``out_dir`` and renamed into place, so ``out_dir`` is never a half export; weights
    holding NaN/inf are refused (NonFiniteLossError) and leave any earlier export untouched."""
    import shutil

    from safetensors.torch import save_file

    model = model if model is not None else module.model     # FSDP: the gathered copy (unsharded_model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    check_finite_weights(state, f"an export to {out_dir}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "model_config.json").write_text(json.dumps(asdict(module.model_cfg), indent=2))
        (tmp / "config.yaml").write_text(to_yaml(module.cfg))
        if module.tokenizer_json is not None:
            (tmp / "tokenizer.json").write_text(module.tokenizer_json)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():                       # replace an earlier export only once the new one is whole
        old = out_dir.with_name(f".{out_dir.name}.old{os.getpid()}")
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)
    return out_dir / "model.safetensors"


def model_differences(saved: dict, cfg: Config) -> list[str]:
    """"key saved vs now" for every configured ModelConfig field in which a checkpoint's ``saved``
    model config differs from what ``cfg`` builds (data-measured fields are not compared)."""
    now = asdict(cfg.model_config(vocab_size=saved.get("vocab_size")))
    return [f"{k} {saved[k]!r} vs {now[k]!r}" for k in sorted(set(saved) & set(now) - set(DATA_DERIVED))
            if saved[k] != now[k]]


def check_resume(cfg: Config) -> None:
    """ConfigError, before any data preparation, when ``ckpt_path`` is missing, unreadable (e.g.
    truncated) or holds a model of another shape than ``cfg`` builds."""
    if cfg.ckpt_path is None:
        return
    path = Path(cfg.ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path}: checkpoint not found")
    try:                                           # mmap: only the metadata is read here
        ck = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        saved = ck["hyper_parameters"]["model_config"]
        preset = ck["hyper_parameters"]["config"]["model"]["preset"]
    except Exception as exc:  # noqa: BLE001 - any failure to read it is the same answer
        raise ConfigError(f"ckpt_path={path}: not a readable procpaint checkpoint (truncated or another "
                          f"format: {type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    diff = model_differences(saved, cfg)
    if diff or preset != cfg.model.preset:
        raise ConfigError(f"ckpt_path={path} holds a model.preset={preset!r} model, this config builds "
                          f"model.preset={cfg.model.preset!r} ({', '.join(diff[:4]) or 'same shapes'}): resume "
                          f"with the config the checkpoint was trained with")


def check_finetune(cfg: Config):
    """The :class:`~procpaint.inference.loading.Weights` of ``cfg.finetune_from`` (None when unset),
    checked before any data preparation: readable, and holding the model ``cfg`` builds at the
    image size ``cfg`` trains. ConfigError naming the key otherwise."""
    if cfg.finetune_from is None:
        return None
    from procpaint.inference.loading import CheckpointError, read_weights

    try:
        w = read_weights(cfg.finetune_from)
    except CheckpointError as exc:
        raise ConfigError(f"finetune_from={cfg.finetune_from}: {exc}") from None
    diff = model_differences(asdict(w.model_config), cfg)
    if diff:
        raise ConfigError(f"finetune_from={cfg.finetune_from} holds another model than this config builds "
                          f"({', '.join(diff[:4])}{', ...' if len(diff) > 4 else ''}): fine-tune with the "
                          "base's model settings")
    if w.image_size != cfg.data.image_size:
        raise ConfigError(f"finetune_from={cfg.finetune_from} was trained at data.image_size={w.image_size}, "
                          f"this config trains at {cfg.data.image_size}")
    return w


def _same_vocabulary(base, tokenizer, where: str) -> None:
    """ConfigError unless the data's tokenizer maps every word to the id the base model learnt."""
    a = base.tok.get_vocab(with_added_tokens=True)
    b = tokenizer.tok.get_vocab(with_added_tokens=True)
    if a != b:
        differ = sorted(set(a.items()) ^ set(b.items()), key=lambda kv: kv[1])
        raise ConfigError(f"finetune_from={where}: the data's tokenizer ({len(b)} tokens) differs from the "
                          f"base's ({len(a)}) in {len(differ)} (word, id) pairs, e.g. {differ[:4]}: the base "
                          "was trained on other words; build the data with the base's vocabulary")


def train_summary(cfg: Config, totals: dict, steps: int) -> dict:
    """What a run consumed (train_summary.json, the equal-compute columns of train/reproduce.py):
    optimizer steps, and per step the packed and real tokens, generated images (noised copies,
    the flow loss's images), CE and MSE tokens, all ranks together; training seconds (the slowest
    rank's time inside training batches: no data build, validation or closing eval)."""
    packs = max(totals["packs"], 1.0)
    per_step = max(steps, 1)
    return {"steps": steps, "ranks": int(totals.get("ranks", 1)), "packs": int(totals["packs"]),
            "packed_tokens_per_step": totals["packed_tokens"] / per_step,
            "real_tokens_per_step": totals["real_tokens"] / per_step,
            "generated_images_per_step": totals["generated_images"] / per_step,
            "ce_tokens_per_step": totals["ce_tokens"] / per_step,
            "mse_tokens_per_step": totals["mse_tokens"] / per_step,
            "packing_efficiency": totals["real_tokens"] / max(totals["packed_tokens"], 1.0),
            "seconds": totals["seconds"], "seconds_per_pack": totals["seconds"] / packs,
            "seed": cfg.seed, "finetune_from": cfg.finetune_from, "resumed_from": cfg.ckpt_path,
            "data": {"subsets": list(cfg.data.subsets), "trajectory": cfg.data.trajectory,
                     "build_samples": cfg.data.build_samples}}


def fit(cfg: Config, *, extra_callbacks=()) -> FitResult:
    check_resume(cfg)                               # before any data preparation
    base = check_finetune(cfg)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    datamodule = ProcPaintDataModule(cfg)
    # The vocabulary size (for the model) comes from the dataset's tokenizer, so the data must exist
    # before the trainer starts: local rank 0 builds it (Lightning's DDP launcher spawns the other
    # ranks later, inside trainer.fit); ranks started externally (torchrun, SLURM) wait for it.
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        datamodule.prepare_data()
    else:
        datamodule.wait_for_data()
    tokenizer = datamodule.load_tokenizer()
    if base is None:
        # Latent statistics come from the data (every rank reads the same records, so all agree).
        module = ProcPaintModule.from_config(cfg, vocab_size=tokenizer.vocab_size, **datamodule.latent_stats())
    else:
        # A fine-tune keeps the base's latent scale and token ids: the weights were learnt on them.
        _same_vocabulary(base.tokenizer, tokenizer, cfg.finetune_from)
        module = ProcPaintModule.from_config(cfg, vocab_size=tokenizer.vocab_size,
                                             latent_mean=base.model_config.latent_mean,
                                             latent_std=base.model_config.latent_std)
        module.init_state = base.state
    module.tokenizer_json = tokenizer.tok.to_str()
    callbacks = list(extra_callbacks)
    # A model trained on final images only (single-pass baseline) is sampled that way.
    mode = "single-pass" if cfg.data.trajectory == "final_only" else "process"
    if cfg.logging.trajectory_every_n_steps > 0:
        prompts = cfg.logging.val_prompts or default_val_prompts(cfg.seed)
        callbacks.append(TrajectoryLogger(prompts, tokenizer, image_size=cfg.data.image_size,
                                          every_n_steps=cfg.logging.trajectory_every_n_steps,
                                          config=cfg.sampling.generation_config(mode=mode)))
    trainer = build_trainer(cfg, extra_callbacks=callbacks)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)

    log_dir = trainer.logger.log_dir
    ckpt_cb = trainer.checkpoint_callback
    last = ckpt_cb.last_model_path if ckpt_cb is not None else None
    weights = None
    sharded = is_sharded(module.model)
    if sharded and ckpt_cb is not None and trainer.global_step % cfg.logging.checkpoint_every_n_steps:
        trainer.save_checkpoint(Path(ckpt_cb.dirpath) / "last.ckpt")  # FSDP: every rank writes its shards
        last = str(Path(ckpt_cb.dirpath) / "last.ckpt")
    # FSDP: every rank takes part in gathering the (EMA) weights into one plain copy on rank 0.
    final = unsharded_model(module.model, ema=module.ema) if sharded else module.model
    if trainer.is_global_zero:
        if not sharded and ckpt_cb is not None and trainer.global_step % cfg.logging.checkpoint_every_n_steps:
            trainer.save_checkpoint(Path(ckpt_cb.dirpath) / "last.ckpt")  # the final step too
            last = str(Path(ckpt_cb.dirpath) / "last.ckpt")
        weights = str(export_weights(module, Path(log_dir) / "export", model=final))
    if trainer.is_global_zero and module.global_totals is not None:
        atomic_write(Path(log_dir) / "train_summary.json",
                     json.dumps(train_summary(cfg, module.global_totals, trainer.global_step), indent=2) + "\n")
    val = trainer.callback_metrics.get("val/loss")
    evaluation = None
    if trainer.is_global_zero and cfg.logging.final_eval_prompts > 0:
        # The module holds the EMA weights now (EMAWeightAveraging copies them in at the end; FSDP:
        # `final` is the gathered EMA).
        evaluation = quick_eval(final, tokenizer, image_size=cfg.data.image_size,
                                n=cfg.logging.final_eval_prompts, seed=cfg.seed,
                                config=cfg.sampling.generation_config(mode=mode),
                                sheet=Path(log_dir) / "quick_eval.png")
        (Path(log_dir) / "quick_eval.json").write_text(json.dumps(evaluation, indent=2))
    result = FitResult(log_dir=log_dir, checkpoint=last or None, weights=weights,
                       val_loss=float(val) if val is not None else None, evaluation=evaluation)
    if trainer.is_global_zero:
        print(f"\nTensorBoard logs : {log_dir}   (tensorboard --logdir {cfg.trainer.default_root_dir})")
        print(f"Checkpoint       : {result.checkpoint}")
        print(f"Exported weights : {result.weights}")
        if result.val_loss is not None:
            print(f"Held-out val loss: {result.val_loss:.4f}")
        if evaluation is not None:
            e = evaluation
            print(f"Held-out GenEval ({mode}, GenEval rules, {e['prompts']} prompts / "
                  f"{e['distinct_prompts']} distinct, drew an image: {e['drew_image']:.2f}, "
                  f"{e['forward_passes']:.0f} forward passes/prompt; contact sheet "
                  f"{Path(log_dir) / 'quick_eval.png'}):")
            print(format_summary(e["geneval"]))
    return result
