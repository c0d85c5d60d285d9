"""The LightningModule: a thin, uniform wrapper around the model and the packed loss.

The model is built in ``configure_model`` (so FSDP can shard it as it is created), the DataModule
is never built here, and every stage goes through one ``_shared_step``. A non-finite loss or gradient
skips the update with a warning, on every rank alike: the loss's non-finite flag travels in the one
all-reduce that also carries the token counts (``training/losses.py``; every rank then backpropagates
a zero loss, so none waits alone in the gradient all-reduce), and the gradient norm is already global.
Skipped updates are counted in ``train/skipped_steps``; ``loss.max_nonfinite_steps`` consecutive ones,
or a non-finite weight after an update, stop training with :class:`NonFiniteLossError`. A checkpoint whose
weights are not all finite is never written: the last good one stays the last one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict

import lightning as L
import torch

from procpaint.config import Config, config_from_dict
from procpaint.kernels.masks import mean_keys_per_query
from procpaint.model.config import ModelConfig
from procpaint.model.factory import flops_per_token, matmul_peak_flops, vit_flops_per_patch
from procpaint.model.parallel import global_grad_norm, is_sharded, local
from procpaint.sequence.types import PackedBatch
from procpaint.training.losses import packed_loss

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training produced too many consecutive NaN/inf losses or gradients, or non-finite weights."""


def nonfinite_tensors(state: dict) -> list[str]:
    """Names of the floating-point tensors of ``state`` (a state dict) holding NaN or inf."""
    return [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
            and not bool(torch.isfinite(local(v)).all())]      # a sharded tensor: this rank's part


def check_finite_weights(state: dict, what: str) -> None:
    """NonFiniteLossError naming the first non-finite tensors of ``state``; ``what`` is being written."""
    bad = nonfinite_tensors(state)
    if bad:
        raise NonFiniteLossError(f"refusing to write {what}: {len(bad)} weight tensor(s) hold NaN/inf "
                                 f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")


def lr_lambda(step: int, *, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base lr: linear warmup, then cosine down to ``min_ratio`` or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def pack_flops(cfg: ModelConfig, batch: PackedBatch, *, training: bool = True) -> float:
    """Model FLOPs of one pass over ``batch``'s real tokens (padding is wasted work, not counted):
    :func:`flops_per_token` at the pack's mean keys per query and LM-head share, plus each ViT
    image's encoder and connector (:func:`vit_flops_per_patch`)."""
    keys = mean_keys_per_query(batch.split_lens, batch.attn_modes, batch.sample_lens)
    head = batch.ce_indexes.numel() / max(batch.seq_len, 1)
    total = flops_per_token(cfg, keys, training=training, lm_head_fraction=head) * batch.num_real_tokens
    for k in batch.vit_seqlens:
        total += k * vit_flops_per_patch(cfg, k, training=training)
    return total


TOTALS = ("packs", "real_tokens", "packed_tokens", "generated_images", "ce_tokens", "mse_tokens", "seconds")


class ProcPaintModule(L.LightningModule):
    def __init__(self, config: dict, model_config: dict):
        """config: the experiment Config as a plain dict (saved as hyperparameters);
        model_config: the resolved ModelConfig fields (vocab size included)."""
        super().__init__()
        self.save_hyperparameters()
        self.cfg = config if isinstance(config, Config) else config_from_dict(config)
        self.model_cfg = ModelConfig(**model_config)
        self.model: torch.nn.Module | None = None
        self.ema = None            # ShardedEMA under FSDP (Lightning's EMA callback otherwise)
        self._nonfinite = 0           # consecutive skipped updates
        self._skipped_steps = 0       # all skipped updates of this run (train/skipped_steps)
        self._loss_nonfinite = 0      # ranks with a non-finite loss since the last optimizer step
        self._step_start = None
        self._peak_flops = 0.0        # measured at train start (perf/mfu)
        self._skipped_records: dict[int, int] = {}   # data.on_error=skip: DataLoader worker -> its count
        self.tokenizer_json: str | None = None  # set by the runner; stored in checkpoints
        self.init_state: dict | None = None     # fine-tuning: weights loaded once the model exists
        # What training consumed on this rank (train_summary.json; kept in checkpoints so a resumed
        # run counts its whole history): packs, real and packed tokens, generated (noised) images,
        # CE and MSE tokens, seconds spent in training batches.
        self.totals = dict.fromkeys(TOTALS, 0.0)
        self.global_totals: dict | None = None  # summed over ranks at the end of training

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Runs after the callbacks' hooks (EMA has put its average in state_dict): raising here
        # stops the write, so no checkpoint with NaN weights replaces a good one.
        for key in ("state_dict", "current_model_state"):
            check_finite_weights(checkpoint.get(key) or {},
                                 f"a checkpoint at step {checkpoint.get('global_step')}")
        # The tokenizer travels with the weights so sampling/evaluation need nothing else.
        if self.tokenizer_json is not None:
            checkpoint["tokenizer_json"] = self.tokenizer_json
        checkpoint["procpaint_totals"] = dict(self.totals)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokenizer_json = checkpoint.get("tokenizer_json", self.tokenizer_json)
        self.totals.update(checkpoint.get("procpaint_totals") or {})

    @classmethod
    def from_config(cls, cfg: Config, vocab_size: int, **measured) -> ProcPaintModule:
        """``measured``: data-derived ModelConfig fields (``latent_mean``, ``latent_std``)."""
        from omegaconf import OmegaConf

        plain = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
        return cls(plain, asdict(cfg.model_config(vocab_size=vocab_size, **measured)))

    def configure_model(self) -> None:
        if self.model is not None:  # called again on resume / by strategies: build once
            return
        from procpaint.model import apply_activation_checkpointing, apply_compile, build_model

        if getattr(self, "_device_mesh", None) is not None:   # FSDP: built on meta, sharded, then filled
            from procpaint.training.sharding import ShardedEMA, fsdp_parallelize

            self.model = build_model(self.model_cfg, device=self.trainer.strategy.root_device,
                                     parallelize=fsdp_parallelize(self.cfg, self._device_mesh,
                                                                  self.trainer.precision))
            self._load_init_state()
            if self.cfg.optim.ema_decay > 0:
                self.ema = ShardedEMA(self.model, self.cfg.optim.ema_decay)
            return
        self.model = build_model(self.model_cfg)
        self._load_init_state()
        if self.cfg.parallel.activation_checkpointing > 0:
            apply_activation_checkpointing(self.model, every=self.cfg.parallel.activation_checkpointing)
        if self.cfg.parallel.compile:
            apply_compile(self.model)

    def _load_init_state(self) -> None:
        """Fine-tuning (``finetune_from``): the base's weights into the freshly built model (each
        rank copies its own rows into a sharded one). A resumed run's checkpoint replaces them later."""
        if self.init_state is None:
            return
        from procpaint.inference.loading import load_state
        from procpaint.model.parallel import copy_into

        if is_sharded(self.model):
            ours = self.model.state_dict()
            missing = sorted(set(ours) - set(self.init_state) - {k for k in ours if k.startswith("codec.")})
            if missing:
                raise ValueError(f"finetune_from={self.cfg.finetune_from}: weights lack {missing[:5]}")
            with torch.no_grad():
                for key, t in ours.items():
                    if key in self.init_state:
                        copy_into(t, self.init_state[key])
        else:
            load_state(self.model, self.init_state, self.cfg.finetune_from)
        self.init_state = None                  # loaded once; the model owns the weights now

    def _noise_generator(self) -> torch.Generator:
        """A generator seeded by (seed, step, rank): resumed runs draw the same noise."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed((self.cfg.seed * 1_000_003 + self.global_step) * 1009 + self.global_rank)
        return gen

    def _shared_step(self, batch: PackedBatch, stage: str):
        out = self.model(batch, generator=self._noise_generator())
        parts = packed_loss(out.ce_logits, batch.ce_labels, out.v_pred, out.clean, out.noise,
                            lambda_ce=self.cfg.loss.lambda_ce)
        # The values are global means, the same on every rank, so every rank logs the same keys.
        if stage == "train":
            # Every step logs all three, NaN for a part this step lacks (a pack without an image to
            # generate) or for a skipped step: a key left out would show its last value again.
            nan = float("nan")
            self.log("train/loss", nan if parts.skipped else parts.value, prog_bar=True, batch_size=1)
            for name in ("ce", "mse"):
                self.log(f"train/{name}", nan if parts.skipped else getattr(parts, name), batch_size=1)
            return parts
        if parts.skipped:
            return parts
        self.log(f"{stage}/loss", parts.value, prog_bar=True, on_step=False, on_epoch=True, batch_size=1,
                 sync_dist=True)
        for name in ("ce", "mse"):     # epoch means over the batches that have the part
            value = getattr(parts, name)
            if torch.isfinite(value):
                self.log(f"{stage}/{name}", value, on_step=False, on_epoch=True, batch_size=1, sync_dist=True)
        return parts

    def on_train_batch_start(self, batch, batch_idx):
        self._step_start = time.perf_counter()

    def _any_rank(self, flag: bool | torch.Tensor) -> bool:
        """``flag`` or-ed over all ranks (one all-reduce), so every rank takes the same branch."""
        t = torch.as_tensor(flag, dtype=torch.float32, device=self.device).reshape(())
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.world_size > 1:
            t = trainer.strategy.reduce(t, reduce_op="max")
        return bool(t.item())

    def training_step(self, batch: PackedBatch, batch_idx: int):
        # A non-finite loss on any rank makes parts.loss a zero on the graph on every rank: all ranks
        # run the same backward and collectives, and on_before_optimizer_step skips the update.
        parts = self._shared_step(batch, "train")
        self._loss_nonfinite = max(self._loss_nonfinite, parts.nonfinite_ranks)
        stats = batch.stats or {}
        self.log("train/packing_efficiency", float(stats.get("efficiency", 0.0)), batch_size=1)
        self.log("train/skipped_samples", float(stats.get("skipped_total", 0)), batch_size=1)
        if self.cfg.data.on_error == "skip":   # corrupt records skipped by this rank's readers so far
            self._skipped_records[stats.get("worker", 0)] = int(stats.get("skipped_records", 0))
            self.log("train/skipped_records", float(sum(self._skipped_records.values())), batch_size=1)
        self.log("train/ce_tokens", float(parts.ce_tokens), batch_size=1)
        self.log("train/mse_tokens", float(parts.mse_tokens), batch_size=1)
        t = self.totals
        t["packs"] += 1
        t["real_tokens"] += batch.num_real_tokens
        t["packed_tokens"] += batch.seq_len
        t["generated_images"] += int(batch.latent_image_ids[batch.latent_noised].unique().numel())
        t["ce_tokens"] += int(batch.ce_labels.numel())
        t["mse_tokens"] += int(batch.latent_noised.sum())
        return parts.loss

    def on_train_end(self) -> None:
        """``global_totals``: :attr:`totals` summed over ranks (seconds: the slowest rank's), for
        train_summary.json; data.on_error=skip: the corrupt records skipped over all ranks."""
        vals = torch.tensor([self.totals[k] for k in TOTALS], dtype=torch.float64, device=self.device)
        secs = vals[-1:].clone()
        if self.trainer.world_size > 1:
            vals = self.trainer.strategy.reduce(vals, reduce_op="sum")
            secs = self.trainer.strategy.reduce(secs, reduce_op="max")
        self.global_totals = {**dict(zip(TOTALS, vals.tolist())), "seconds": float(secs.item()),
                              "ranks": self.trainer.world_size}
        if self.cfg.data.on_error != "skip":
            return
        n = torch.tensor(float(sum(self._skipped_records.values())), device=self.device)
        if self.trainer.world_size > 1:
            n = self.trainer.strategy.reduce(n, reduce_op="sum")
        if self.trainer.is_global_zero:
            print(f"Skipped records  : {int(n.item())} corrupt training records (data.on_error=skip; "
                  "each named in a warning)")

    def on_train_batch_end(self, outputs, batch: PackedBatch, batch_idx: int):
        if self._step_start is None:
            return
        dt = max(time.perf_counter() - self._step_start, 1e-9)
        self.totals["seconds"] += dt
        self.log("perf/step_time_s", dt, batch_size=1)
        self.log("perf/tokens_per_s", batch.num_real_tokens / dt, prog_bar=True, batch_size=1)
        self.log("perf/samples_per_s", batch.num_samples / dt, batch_size=1)
        if self._peak_flops:
            # Model FLOPs of the real tokens (padding is wasted work, not counted) over the device's
            # measured matmul peak (ModelConfig FLOPs per token, PaLM's convention).
            achieved = pack_flops(self.model_cfg, batch) / dt
            self.log("perf/tflops", achieved / 1e12, batch_size=1)
            self.log("perf/mfu", achieved / self._peak_flops, batch_size=1)

    def on_train_start(self) -> None:
        # The roofline perf/mfu is measured against: this device's best square matmul in the
        # training precision's compute dtype (measured, not a datasheet number).
        p = str(self.trainer.precision)
        dtype = torch.bfloat16 if "bf16" in p else torch.float16 if "16" in p else torch.float32
        self._peak_flops = matmul_peak_flops(self.device, dtype)
        self.print(f"perf/mfu is measured against {self._peak_flops / 1e12:.3f} TFLOP/s "
                   f"({self.device.type} {str(dtype).replace('torch.', '')} matmul, measured)")

    def validation_step(self, batch: PackedBatch, batch_idx: int):
        self._shared_step(batch, "val")

    def on_before_optimizer_step(self, optimizer):
        bad_loss, self._loss_nonfinite = self._loss_nonfinite, 0   # the same on every rank
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        # Global on every rank (DDP has averaged the gradients; FSDP's shards are all-reduced inside):
        # a non-finite gradient anywhere is seen everywhere without another collective.
        norm = global_grad_norm(self.parameters())
        scaler = getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None)
        if scaler is not None and not bad_loss:   # fp16: the GradScaler skips inf steps, lowers its scale
            if grads and torch.isfinite(norm):
                self.log("train/grad_norm", norm, batch_size=1)
            return
        if bad_loss or not bool(torch.isfinite(norm)):
            self._nonfinite += 1
            self._skipped_steps += 1
            world = getattr(self._trainer, "world_size", 1)
            what = f"non-finite loss on {bad_loss} of {world} rank(s)" if bad_loss else "non-finite gradient"
            log.warning("%s at step %d: skipping the update (%d consecutive)",
                        what, self.global_step, self._nonfinite)
            self.log("train/nonfinite_steps", float(self._nonfinite), batch_size=1)
            self.log("train/skipped_steps", float(self._skipped_steps), batch_size=1)
            for p in self.parameters():       # the optimizer skips parameters without a gradient
                p.grad = None
            if self._nonfinite >= self.cfg.loss.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"{self._nonfinite} consecutive non-finite losses or gradients at step "
                    f"{self.global_step} "
                    f"(loss.max_nonfinite_steps={self.cfg.loss.max_nonfinite_steps}); no update was applied, "
                    f"the last checkpoint holds the last good weights; lower optim.lr or check the data")
            return
        self._nonfinite = 0
        self.log("train/skipped_steps", float(self._skipped_steps), batch_size=1)
        if grads:
            self.log("train/grad_norm", norm, batch_size=1)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # A finite gradient can still overflow a weight: stop before any checkpoint sees it.
        amax = [local(p).detach().abs().max().float() for p in self.parameters() if local(p).numel()]
        if amax and self._any_rank(not torch.isfinite(torch.stack(amax).max())):
            raise NonFiniteLossError(
                f"the update of step {self.global_step} made weights non-finite "
                f"({', '.join(nonfinite_tensors(dict(self.named_parameters()))[:3])}); training stopped, "
                f"the last checkpoint holds the last good weights; lower optim.lr")
        if self.ema is not None:                 # FSDP's EMA: each rank averages its own shards
            self.ema.update(self.model)

    def configure_optimizers(self):
        o = self.cfg.optim
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "norm" in name or "embed" in name else decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        total = self.cfg.trainer.max_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(
            s, warmup=o.warmup_steps, total=total, schedule=o.schedule, min_ratio=o.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
