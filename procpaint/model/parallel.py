"""Sharding the model with FSDP2 (``torch.distributed.fsdp.fully_shard``), torchtitan's pattern.

Adapted from torchtitan ``models/llama3/infra/parallelize.py`` (``apply_fsdp``): each decoder layer
is one FSDP unit (its parameters are all-gathered just before the layer runs and freed after), the
root unit holds the rest (token embedding, LM head, final norms, generation glue). The codec is not
sharded: it is frozen, small next to the transformer (FLUX's AE: 84M parameters) and runs once per
step on the whole image batch, so every rank keeps a full copy.

Order of the steps (as torchtitan): activation checkpointing and compile wrap the layers first,
then ``apply_fsdp`` shards them, all on the meta device; :func:`procpaint.model.build_model` then
materialises the shards (``to_empty`` + ``init_weights`` on each rank's shard) and loads
``model.init_from`` into them (:func:`copy_into`), so no rank ever holds the whole model.

Helpers that the training side needs for sharded models, free of Lightning: :func:`is_sharded`,
:func:`local` (a rank's own part of a parameter), :func:`full_state_dict` (the whole weights, gathered
on rank 0, a collective) and :func:`global_grad_norm`.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)


def is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor  # torch >= 2.6 (pyproject); lazy: a CLI start skips it

    return isinstance(t, DTensor)


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a DTensor (FSDP2-sharded)."""
    return any(is_dtensor(p) for p in model.parameters())


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t``: the local shard of a DTensor, ``t`` itself otherwise."""
    return t.to_local() if is_dtensor(t) else t


def apply_fsdp(model: nn.Module, mesh, *, param_dtype: torch.dtype | None = None,
               reduce_dtype: torch.dtype | None = torch.float32, reshard_after_forward: bool = True
               ) -> nn.Module:
    """Shard ``model`` (a :class:`~procpaint.model.ProcPaintModel`) over the 1-D ``mesh`` in place.

    One FSDP unit per decoder layer and per ViT layer (``cfg.vit``), plus the root. ``param_dtype``: the dtype parameters are gathered
    and computed in (bf16 for the 7B recipe; the sharded fp32 master copy is what the optimizer
    updates), ``reduce_dtype``: gradients are reduce-scattered in it (fp32 as torchtitan).
    ``reshard_after_forward``: free a layer's gathered weights after its forward (ZeRO-3, what
    the 7B recipe needs); False keeps them until backward (ZeRO-2 traffic, more memory). The last
    layer is never resharded after forward (backward needs it at once; torchtitan does the same).
    Works on the meta device; parameters become DTensors with ``Shard(0)`` placement.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    ignored = set(model.codec.parameters()) if getattr(model, "codec", None) is not None else set()
    vit = getattr(model, "vit", None)
    # The ViT's layers (BAGEL-7B: 26 of SigLIP's, ~0.4B parameters) are units of their own too:
    # they run before the decoder, so each is gathered, used and freed in turn.
    for layer in (vit.layers if vit is not None else ()):
        fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    layers = list(model.layers)
    for i, layer in enumerate(layers):
        fully_shard(layer, mesh=mesh, mp_policy=mp,
                    reshard_after_forward=reshard_after_forward and i < len(layers) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward,
                ignored_params=ignored or None)
    logger.info("FSDP: %d decoder layers, %d ViT layers + root sharded over %d ranks (param dtype %s, "
                "reduce %s)", len(layers), len(vit.layers) if vit is not None else 0, mesh.size(),
                param_dtype, reduce_dtype)
    return model


@torch.no_grad()
def copy_into(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy the whole tensor ``full`` into ``param``: a plain tensor, or a DTensor of which only
    this rank's shard is written (every rank passes the same ``full``; no communication)."""
    if is_dtensor(param):
        from torch.distributed.tensor import distribute_tensor

        if tuple(full.shape) != tuple(param.shape):
            raise ValueError(f"shape {tuple(full.shape)} does not fit parameter {tuple(param.shape)}")
        piece = distribute_tensor(full.to(param.device, param.dtype), param.device_mesh, param.placements,
                                  src_data_rank=None)   # local split only: every rank has `full`
        param.to_local().copy_(piece.to_local())
    else:
        param.copy_(full)


def full_state_dict(model: nn.Module, *, rank0_only: bool = True) -> dict[str, torch.Tensor]:
    """The whole state dict of ``model`` on the CPU, DTensors gathered (a collective: every rank
    calls it). With ``rank0_only`` the other ranks get ``{}`` (and hold no full copy)."""
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=rank0_only)
    state = get_model_state_dict(model, options=opts)
    if rank0_only and dist.get_rank() != 0:
        return {}
    return {k: v.detach().cpu() for k, v in state.items()}


def global_grad_norm(params, *, group=None) -> torch.Tensor:
    """The L2 norm of all gradients of ``params`` over every rank (float32 scalar).

    Sharded (DTensor) gradients contribute their local shards' squares, summed over ranks with one
    all-reduce; plain gradients (replicated: DDP has already averaged them) count once. Non-finite
    gradients on any rank make the result non-finite on every rank.
    """
    sharded, plain = [], []
    for p in params:
        if p.grad is not None:
            (sharded if is_dtensor(p.grad) else plain).append(p.grad)
    dev = (sharded or plain)[0].device if (sharded or plain) else torch.device("cpu")
    sq = torch.zeros((), device=dev, dtype=torch.float32)
    for g in sharded:
        sq = sq + local(g).detach().float().pow(2).sum()
    if sharded and dist.is_available() and dist.is_initialized():
        dist.all_reduce(sq, group=group if group is not None else sharded[0].device_mesh.get_group())
    for g in plain:
        sq = sq + g.detach().float().pow(2).sum()
    return sq.sqrt()
