"""FSDP on the training side: the strategy, the parallelize step, a sharded EMA, and whole-model
views for generation and export.

``trainer.strategy: fsdp`` means FSDP2 through Lightning's :class:`ModelParallelStrategy` (one
data-parallel mesh dimension over every rank, no tensor parallelism): the LightningModule builds
the model in ``configure_model`` on the meta device and shards it there
(:func:`fsdp_parallelize` -> :func:`procpaint.model.parallel.apply_fsdp`), torchtitan's pattern.

Everything that needs the whole model under FSDP is a collective: every rank calls
:func:`unsharded_model`, which gathers the weights (optionally the EMA) onto rank 0 and builds a
plain model there; rank 0 generates or exports while the others wait at a barrier.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import torch
from torch import nn

from procpaint.model.parallel import apply_fsdp, full_state_dict, is_dtensor, is_sharded, local

log = logging.getLogger(__name__)

# Lightning precision -> the dtype FSDP gathers parameters in (the sharded master copy stays fp32).
PARAM_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def fsdp_strategy(devices, num_nodes: int):
    """Lightning's ModelParallelStrategy as plain FSDP2: data parallel over all ranks, TP 1.
    Distributed (sharded) checkpoints: a folder per checkpoint, one file per rank."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    if isinstance(devices, int) and devices > 0:
        per_node = devices
    elif isinstance(devices, (list, tuple)):
        per_node = len(devices)
    else:                                   # "auto" / -1: every visible GPU (or one CPU process)
        per_node = max(1, torch.cuda.device_count())
    return ModelParallelStrategy(data_parallel_size=per_node * num_nodes, tensor_parallel_size=1)


def fsdp_parallelize(cfg, mesh, precision) -> Callable[[nn.Module], None]:
    """The parallelize step for :func:`procpaint.model.build_model` (torchtitan order): activation
    checkpointing, compile, then FSDP per decoder layer. ``cfg``: the experiment Config; ``mesh``:
    Lightning's device mesh; ``precision``: the Trainer's precision string."""
    from procpaint.model import apply_activation_checkpointing, apply_compile

    dp_mesh = mesh["data_parallel"] if mesh.ndim > 1 else mesh

    def parallelize(model: nn.Module) -> None:
        if cfg.parallel.activation_checkpointing > 0:
            apply_activation_checkpointing(model, every=cfg.parallel.activation_checkpointing)
        if cfg.parallel.compile:
            apply_compile(model)
        apply_fsdp(model, dp_mesh, param_dtype=PARAM_DTYPES.get(str(precision)))

    return parallelize


class ShardedEMA(nn.Module):
    """An exponential moving average of a (sharded) model's trainable parameters, kept in buffers of
    the same sharding: each rank averages only its own shards, so the EMA costs one fp32 copy of a
    shard and no communication. Its buffers are part of the LightningModule's state dict
    (``ema.<name with __>``), so distributed checkpoints save and restore it shard by shard."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.decay = decay
        self._names = []
        for name, p in model.named_parameters():
            if p.requires_grad:
                key = name.replace(".", "__")
                self.register_buffer(key, p.detach().clone().float())
                self._names.append((key, name))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for key, name in self._names:
            local(getattr(self, key)).lerp_(local(params[name]).float(), 1.0 - self.decay)

    def weights(self) -> dict[str, torch.Tensor]:
        """Parameter name -> EMA tensor (sharded like the parameter)."""
        return {name: getattr(self, key) for key, name in self._names}


def unsharded_model(model: nn.Module, *, ema: ShardedEMA | None = None, dtype: torch.dtype | None = None
                    ) -> nn.Module | None:
    """A plain (unsharded) copy of a sharded ``model`` on rank 0, ``None`` on the other ranks; an
    unsharded ``model`` is returned as is (the EMA then lives elsewhere: Lightning's callback).

    A collective under FSDP: every rank must call it. ``ema``: use its weights. ``dtype``: cast the
    copy's floating-point weights (bf16 keeps a 14B copy at 28 GB on rank 0's GPU). The codec is
    shared with ``model`` (it is not sharded).
    """
    if not is_sharded(model):
        return model
    import torch.distributed as dist

    state = full_state_dict(model)
    rank0 = dist.get_rank() == 0
    if ema is not None:
        for name, t in ema.weights().items():        # one tensor at a time, same order on every rank
            full = t.full_tensor() if is_dtensor(t) else t
            if rank0:
                key = name.replace("_checkpoint_wrapped_module.", "")
                state[key] = full.detach().cpu().to(state[key].dtype)
    if dist.get_rank() != 0:
        return None
    from procpaint.model import build_model

    device = next(p for p in model.parameters()).device
    cfg = dataclasses.replace(model.cfg, init_from=None, vae_path=None)
    plain = build_model(cfg, device="meta")
    plain.to_empty(device=device)
    plain.codec = model.codec
    own = {k: v for k, v in state.items() if not k.startswith("codec.")}
    missing, unexpected = plain.load_state_dict(own, strict=False)
    missing = [k for k in missing if not k.startswith("codec.")]
    if missing or unexpected:
        raise RuntimeError(f"gathered state does not fit the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    if dtype is not None:
        for name, p in plain.named_parameters():
            if not name.startswith("codec.") and p.is_floating_point():
                p.data = p.data.to(dtype)
    plain.attn_backend = model.attn_backend
    return plain.eval()

