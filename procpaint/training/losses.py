"""Training losses: next-token CE on text targets plus rectified-flow MSE on noised latents.

    loss = lambda_ce * CE + MSE
    CE   = mean over CE tokens (text targets and modality-switch labels)
    MSE  = mean over channels, then mean over noised latent tokens (target = noise - clean)

Under data parallelism the per-token means are *global*, as BAGEL does: each rank divides its
token sum by the all-reduced token count and multiplies by the world size, so the gradient average
that DDP/FSDP performs yields the mean over all tokens of all ranks, whatever each rank's share.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

try:  # the fused op when present; the same math otherwise
    from procpaint.kernels.flow import rf_mse
except ImportError:  # pragma: no cover - the flow ops land in their own change
    def rf_mse(pred, clean, noise, *, reduction="mean"):
        per_token = (pred.float() - (noise.float() - clean.float())).pow(2).mean(-1)
        return {"none": per_token, "sum": per_token.sum(), "mean": per_token.mean()}[reduction]


@dataclass
class LossParts:
    loss: torch.Tensor      # () float32, what backward runs on
    ce: torch.Tensor        # () detached global-mean CE (nan when the batch has no CE token)
    mse: torch.Tensor       # () detached global-mean MSE (nan when the batch has no noised token)
    ce_tokens: int          # this rank's CE tokens
    mse_tokens: int         # this rank's noised latent tokens


def _global_count(n: int, device: torch.device) -> tuple[float, int]:
    """(tokens over all ranks, world size); (n, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        t = torch.tensor([float(n)], device=device)
        dist.all_reduce(t)
        return float(t.item()), dist.get_world_size()
    return float(n), 1


def packed_loss(ce_logits: torch.Tensor, ce_labels: torch.Tensor, v_pred: torch.Tensor,
                clean: torch.Tensor, noise: torch.Tensor, *, lambda_ce: float = 1.0) -> LossParts:
    """ce_logits: (C, V); ce_labels: (C,) int64; v_pred, clean, noise: (M, D). Returns LossParts."""
    device = v_pred.device
    ce_sum = F.cross_entropy(ce_logits.float(), ce_labels, reduction="sum") if ce_labels.numel() \
        else ce_logits.sum() * 0.0
    # bf16 autocast / FSDP param dtype give a bf16 v_pred; the loss is taken in float32 like CE.
    mse_sum = rf_mse(v_pred.float(), clean.float(), noise.float(), reduction="sum") if v_pred.shape[0] \
        else v_pred.sum() * 0.0
    n_ce, world = _global_count(ce_labels.numel(), device)
    n_mse, _ = _global_count(v_pred.shape[0], device)
    ce = ce_sum * world / n_ce if n_ce else ce_sum
    mse = mse_sum * world / n_mse if n_mse else mse_sum
    nan = torch.tensor(float("nan"), device=device)
    return LossParts(
        loss=lambda_ce * ce + mse,
        ce=(ce_sum.detach() / max(ce_labels.numel(), 1)) if ce_labels.numel() else nan,
        mse=(mse_sum.detach() / max(v_pred.shape[0], 1)) if v_pred.shape[0] else nan,
        ce_tokens=ce_labels.numel(), mse_tokens=v_pred.shape[0],
    )
