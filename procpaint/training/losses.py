"""Training losses: next-token CE on text targets plus rectified-flow MSE on noised latents.

    loss = lambda_ce * CE + MSE
    CE   = mean over CE tokens (text targets and modality-switch labels)
    MSE  = mean over channels, then mean over noised latent tokens (target = noise - clean)

Under data parallelism the per-token means are *global*, as BAGEL does: each rank divides its
token sum by the all-reduced token count and multiplies by the world size, so the gradient average
that DDP/FSDP performs yields the mean over all tokens of all ranks, whatever each rank's share.

One all-reduce and one host sync per step carry the token counts, the detached loss sums (so the
CE/MSE reported are the global means, the same numbers a single process gets on the same global
batch) and a non-finite flag. When any rank's loss is NaN/inf, every rank returns a zero loss still
connected to its graph, so all ranks run the same backward (the gradient all-reduce included) and
the LightningModule skips the update on all of them alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from procpaint.kernels.flow import rf_mse


@dataclass
class LossParts:
    loss: torch.Tensor      # () float32, what backward runs on (0, still on the graph, when skipped)
    ce: torch.Tensor        # () detached global-mean CE (nan when no rank has a CE token)
    mse: torch.Tensor       # () detached global-mean MSE (nan when no rank has a noised token)
    ce_tokens: int          # this rank's CE tokens
    mse_tokens: int         # this rank's noised latent tokens
    nonfinite_ranks: int = 0  # ranks whose loss was NaN/inf this step (every rank sees the same count)
    value: float = math.nan   # the global loss lambda_ce * ce + mse (a present part only), for logging

    @property
    def skipped(self) -> bool:
        """True on every rank when any rank's loss was non-finite: no update may follow."""
        return self.nonfinite_ranks > 0


def _all_reduce_stats(local: list[torch.Tensor]) -> tuple[list[float], int]:
    """``local`` (0-d tensors) summed over all ranks as Python floats, and the world size.

    One all-reduce of one float64 vector and one host sync, whatever the number of entries; without
    an initialised process group the local values and world size 1.
    """
    stats = torch.stack([t.detach().to(torch.float64).reshape(()) for t in local])     # (K,)
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats)
        world = dist.get_world_size()
    return stats.tolist(), world


def packed_loss(ce_logits: torch.Tensor, ce_labels: torch.Tensor, v_pred: torch.Tensor,
                clean: torch.Tensor, noise: torch.Tensor, *, lambda_ce: float = 1.0) -> LossParts:
    """ce_logits: (C, V); ce_labels: (C,) int64; v_pred, clean, noise: (M, D). Returns LossParts.

    Under an initialised process group every rank must call this once per step (it all-reduces).
    """
    device = v_pred.device
    n_ce_local, n_mse_local = ce_labels.numel(), v_pred.shape[0]
    ce_sum = F.cross_entropy(ce_logits.float(), ce_labels, reduction="sum") if n_ce_local \
        else ce_logits.sum() * 0.0
    # bf16 autocast / FSDP param dtype give a bf16 v_pred; the loss is taken in float32 like CE.
    mse_sum = rf_mse(v_pred.float(), clean.float(), noise.float(), reduction="sum") if n_mse_local \
        else v_pred.sum() * 0.0
    bad_local = ~torch.isfinite(ce_sum.detach() + mse_sum.detach())
    count = lambda n: torch.tensor(float(n), device=device)  # noqa: E731
    (n_ce, n_mse, bad, ce_total, mse_total), world = _all_reduce_stats(
        [count(n_ce_local), count(n_mse_local), bad_local, ce_sum, mse_sum])
    ce = ce_sum * world / n_ce if n_ce else ce_sum
    mse = mse_sum * world / n_mse if n_mse else mse_sum
    loss = lambda_ce * ce + mse
    if bad:   # on every rank: a zero on the graph (NaN * 0 is NaN, so non-finite values are zeroed first)
        loss = torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0) * 0.0
    ce_mean = ce_total / n_ce if n_ce else math.nan
    mse_mean = mse_total / n_mse if n_mse else math.nan
    value = (lambda_ce * ce_mean if n_ce else 0.0) + (mse_mean if n_mse else 0.0)
    return LossParts(
        loss=loss, ce=torch.tensor(ce_mean, device=device), mse=torch.tensor(mse_mean, device=device),
        ce_tokens=n_ce_local, mse_tokens=n_mse_local, nonfinite_ranks=int(bad),
        value=value if n_ce or n_mse else math.nan,
    )
