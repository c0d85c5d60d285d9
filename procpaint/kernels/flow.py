"""Rectified-flow ops for training and sampling image latents (docs/ARCHITECTURE.md, "Rectified flow").

Convention (BAGEL's): ``t = 1`` is pure noise.

    t      ~ sigmoid(N(0, 1)), shifted: t' = s t / (1 + (s - 1) t)      sample_timesteps
    z_t    = t * noise + (1 - t) * clean                                 rf_interpolate
    target = noise - clean;  loss = mean_D (pred - target)^2 per token  rf_mse
    x      <- x - v * dt                                                 euler_step

Reading order, per op: the reference ``*_ref`` (plain PyTorch, the spec), the autograd formulas
registered on ``torch.ops.procpaint.*`` (schemas and CPU/CUDA/Meta kernels in ``csrc/flow/``),
then the public function. Public functions validate their arguments (errors name the argument),
run the native kernel when one exists for the device and dtype, and the reference otherwise
(float64 inputs always take the reference, which is what gradcheck uses).

Kernels read every input once, accumulate in float32 and round once on store; the loss never
materializes the target, the noised latents or the squared error. Without grad (pred does not
require grad, or grad mode is off) its extra memory is O(N). When pred requires grad, the pass that
reduces the loss also writes its gradient w.r.t. pred for an upstream grad of 1 into one new
(N, D) buffer in pred's dtype (``rf_mse_with_grad``), saved for the backward instead of pred, clean
and noise: the backward returns that buffer as is for an upstream grad of exactly 1 (a CPU 0-d
grad, e.g. ``loss.backward()``), else scales it with one multiply; the gradients w.r.t. clean and
noise are +/- the same tensor. One training step then moves ~7 N D values (interpolate: 3, loss
and gradient: 4) instead of ~10.

``t`` is per token ``(N,)``, or per image ``(M,)`` with ``index`` ``(N,)`` mapping each token to
its image (a packed batch has one timestep per generated image): kernels read ``t[index[i]]``
without expanding ``t`` to ``(N,)``. The gradient w.r.t. ``t`` is provided (one extra read of
clean/noise in the backward, computed only when ``t`` requires grad).
"""

from __future__ import annotations

import math

import torch

from procpaint import _ext

__all__ = [
    "shift_timesteps", "sample_timesteps", "rf_interpolate", "rf_mse", "euler_step",
    "rf_interpolate_ref", "rf_mse_ref", "euler_step_ref",
]

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
REF_DTYPES = (*KERNEL_DTYPES, torch.float64)  # float64 runs the reference (gradcheck)
REDUCTIONS = ("none", "mean", "sum")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 accumulation for half types, float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


# ---------------------------------------------------------------------------- references (spec)
def rf_interpolate_ref(clean, noise, t, index=None):
    """z_t = t * noise + (1 - t) * clean in float32 (float64 for float64 inputs), rounded to
    clean's dtype. clean, noise: (N, D); t: (N,) or (M,) with index (N,)."""
    acc = _acc_dtype(clean.dtype)
    tt = (t if index is None else t[index]).to(acc)[:, None]  # (N, 1)
    return (tt * noise.to(acc) + (1 - tt) * clean.to(acc)).to(clean.dtype)  # (N, D)


def rf_mse_ref(pred, clean, noise, reduction="mean"):
    """Mean over D of (pred - (noise - clean))^2 per token, then reduced over tokens.
    pred, clean, noise: (N, D) -> (N,) for "none", () otherwise; float32 (float64 for float64)."""
    acc = _acc_dtype(pred.dtype)
    diff = pred.to(acc) - (noise.to(acc) - clean.to(acc))  # (N, D)
    per_token = diff.square().mean(dim=-1)  # (N,)
    if reduction == "none":
        return per_token
    return per_token.mean() if reduction == "mean" else per_token.sum()


def euler_step_ref(x, v, dt):
    """x - v * dt in float32, rounded to x's dtype. x, v: (N, ...); dt: float, () or (N,)."""
    acc = _acc_dtype(x.dtype)
    if isinstance(dt, torch.Tensor) and dt.dim() == 1:
        dt = dt.reshape(-1, *([1] * (x.dim() - 1)))  # (N, 1, ...)
    if isinstance(dt, torch.Tensor):
        dt = dt.to(acc)
    return (x.to(acc) - v.to(acc) * dt).to(x.dtype)


# ---------------------------------------------------------------------------- autograd
def _interp_setup(ctx, inputs, output):
    clean, noise, t, index = inputs
    ctx.save_for_backward(clean, noise, t, index)


def _interp_backward(ctx, grad):
    clean, noise, t, index = ctx.saved_tensors
    need = [bool(n) for n in ctx.needs_input_grad[:3]]
    g_clean, g_noise, g_t = torch.ops.procpaint.rf_interpolate_backward(grad, clean, noise, t, index, need)
    if need[2] and index is not None:  # per-token (N,) -> per-image (M,): O(N)
        g_t = torch.zeros_like(t).index_add(0, index, g_t)
    return (g_clean if need[0] else None, g_noise if need[1] else None, g_t if need[2] else None, None)


def _mse_setup(ctx, inputs, output):
    pred, clean, noise, reduction = inputs
    ctx.reduction = reduction
    ctx.save_for_backward(pred, clean, noise)


def _mse_backward(ctx, grad):
    pred, clean, noise = ctx.saved_tensors
    need = [bool(n) for n in ctx.needs_input_grad[:3]]
    grads = torch.ops.procpaint.rf_mse_backward(grad, pred, clean, noise, ctx.reduction, need)
    return (*(g if n else None for g, n in zip(grads, need)), None)


def _mse_grad_setup(ctx, inputs, output):
    _, _, _, reduction = inputs
    _, g = output  # (N, D), d loss / d pred for an upstream grad of 1
    ctx.reduction = reduction
    ctx.mark_non_differentiable(g)
    ctx.set_materialize_grads(False)  # g's upstream grad stays None: no (N, D) zeros per backward
    ctx.save_for_backward(g)


def _is_exactly_one(grad: torch.Tensor) -> bool:
    """True for a plain 0-d CPU tensor equal to 1 (what ``loss.backward()`` passes). Reads only
    CPU tensors (never syncs a GPU); under tracing (torch.compile, opcheck) the grad is a fake /
    functional tensor subclass and takes the general path."""
    return (type(grad) is torch.Tensor and grad.dim() == 0 and grad.device.type == "cpu"
            and not torch.compiler.is_compiling() and grad.item() == 1.0)


def _mse_grad_backward(ctx, grad, _grad_g):
    (g,) = ctx.saved_tensors  # (N, D) in pred's dtype
    need = ctx.needs_input_grad[:3]
    if grad is None:  # the loss itself got no gradient (materialization is off)
        return None, None, None, None
    if _is_exactly_one(grad):
        gp = g  # no pass at all
    else:  # one multiply in float32, rounded once to g's dtype; grad (N,) for "none", else ()
        scale = grad[:, None] if ctx.reduction == "none" else grad  # (N, 1) or ()
        gp = torch.mul(g, scale, out=torch.empty_like(g))
    # d/dclean = +g, d/dnoise = -g (target = noise - clean). Returning gp for two inputs is safe:
    # autograd copies a grad it cannot steal (gp is also saved here) before making it a leaf's .grad.
    return gp if need[0] else None, gp if need[1] else None, -gp if need[2] else None, None


def _euler_setup(ctx, inputs, output):
    x, v, dt = inputs
    ctx.dt_is_tensor = isinstance(dt, torch.Tensor)
    ctx.save_for_backward(v, dt if ctx.dt_is_tensor else None)
    ctx.dt = None if ctx.dt_is_tensor else dt


def _euler_backward(ctx, grad):
    # Sampling runs without grad; this exists so a differentiable sampler (distillation) works.
    v, dt_t = ctx.saved_tensors
    need_x, need_v, need_dt = ctx.needs_input_grad[:3]
    dt = ctx.dt if not ctx.dt_is_tensor else dt_t.reshape(-1, *([1] * (grad.dim() - 1)))
    g32 = grad.float()
    g_v = (-g32 * dt).to(v.dtype) if need_v else None
    g_dt = None
    if ctx.dt_is_tensor and need_dt:
        g_dt = -(v.float() * g32).flatten(1).sum(1)  # (N,)
        g_dt = g_dt.sum() if dt_t.dim() == 0 else g_dt
    return grad if need_x else None, g_v, g_dt


def _register() -> None:
    """Attach autograd formulas to the native ops (once, when the extension is loaded)."""
    if not _ext.available():
        return
    lib = torch.library
    lib.register_autograd("procpaint::rf_interpolate", _interp_backward, setup_context=_interp_setup)
    lib.register_autograd("procpaint::rf_mse", _mse_backward, setup_context=_mse_setup)
    lib.register_autograd("procpaint::rf_mse_with_grad", _mse_grad_backward, setup_context=_mse_grad_setup)
    lib.register_autograd("procpaint::euler_step", _euler_backward, setup_context=_euler_setup)
    lib.register_autograd("procpaint::euler_step.dt_tensor", _euler_backward, setup_context=_euler_setup)


_register()


# ---------------------------------------------------------------------------- validation
def _check_rows(op: str, name: str, x, ref_name: str | None = None, ref=None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{op}: {name} must have shape (N, D), got {tuple(x.shape)}")
    if x.dtype not in REF_DTYPES:
        raise TypeError(f"{op}: {name} must be float32, bfloat16, float16 (or float64), got {x.dtype}")
    if ref is None:
        return
    if x.shape != ref.shape:
        raise ValueError(f"{op}: {name} must have the shape of {ref_name} {tuple(ref.shape)}, "
                         f"got {tuple(x.shape)}")
    if x.dtype != ref.dtype:
        raise TypeError(f"{op}: {name} must have the dtype of {ref_name} ({ref.dtype}), got {x.dtype}")
    if x.device != ref.device:
        raise ValueError(f"{op}: {name} must be on {ref_name}'s device {ref.device}, got {x.device}")


def _check_t(op: str, t, index, n: int, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or not t.is_floating_point():
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{op}: t must be a 1-D floating tensor, got {shape}")
    if t.device != device:
        raise ValueError(f"{op}: t must be on {device}, got {t.device}")
    if index is None:
        if t.shape[0] != n:
            raise ValueError(f"{op}: t must have shape ({n},) (one timestep per token; pass index= "
                             f"for one per image), got {tuple(t.shape)}")
        return
    if not isinstance(index, torch.Tensor) or index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{op}: index must be an int64 or int32 tensor, got "
                        f"{getattr(index, 'dtype', type(index).__name__)}")
    if index.shape != (n,):
        raise ValueError(f"{op}: index must have shape ({n},) (one image id per token), "
                         f"got {tuple(index.shape)}")
    if index.device != device:
        raise ValueError(f"{op}: index must be on {device}, got {index.device}")
    # Range: the CPU kernel checks before its pass, the CUDA kernel traps on device; the
    # reference (t[index]) would silently wrap negative ids, so check eagerly on CPU here.
    if index.device.type == "cpu" and n > 0 and not torch.compiler.is_compiling():
        lo, hi = int(index.min()), int(index.max())
        if lo < 0 or hi >= t.shape[0]:
            bad = lo if lo < 0 else hi
            raise IndexError(f"{op}: index value {bad} is out of range for t with {t.shape[0]} "
                             f"images (expected 0 <= index < {t.shape[0]})")


# Routing table fixed at import (the loader caches its verdict anyway): a plain dict lookup that
# torch.compile traces without a graph break, unlike the loader's cached filesystem checks.
_NATIVE = {(op, dev): _ext.has_kernel(op, dev)
           for op in ("rf_interpolate", "rf_mse", "euler_step") for dev in ("cpu", "cuda")}


def _native(op: str, x: torch.Tensor) -> bool:
    return x.dtype in KERNEL_DTYPES and _NATIVE.get((op, x.device.type), False)


# ---------------------------------------------------------------------------- public functions
def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """The resolution shift t' = s t / (1 + (s - 1) t) of flow times t in [0, 1] (any float dtype):
    s > 1 spends more of the schedule near t = 1 (noise). Training's timestep sampler and the
    sampling schedule (inference.sampler.schedule) both call it."""
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


def sample_timesteps(n: int, *, shift: float = 1.0, logit_std: float = 1.0, mix_frac: float = 0.0,
                     mix_shift: float = 1.0, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Training timesteps t ~ sigmoid(N(0, logit_std^2)) (logit-normal), then the resolution shift
    t' = s t / (1 + (s - 1) t) (s > 1 moves mass toward noise, t = 1). The shift is a move of the
    logit's mean by log(s), so (shift, logit_std) is SD3's logit-normal(log s, logit_std): a wider
    logit_std trains both ends (the prompt-only regime near t = 1 and the fine detail near 0).
    With ``mix_frac`` > 0 each time is drawn, with that probability, from the logit-normal shifted
    by ``mix_shift`` instead (a two-component mixture: e.g. most mass at the prompt-only end, the
    rest where samples commit to a layout and draw edges). Returns (n,) float32 on ``device``
    (default: the generator's device, else CPU). Same generator state, same values. Plain PyTorch on purpose: O(n) with n images or tokens, and it must use
    torch's RNG streams."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"sample_timesteps: n must be a non-negative int, got {n!r}")
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"sample_timesteps: shift must be a finite float > 0, got {shift!r}")
    if not (isinstance(logit_std, (int, float)) and math.isfinite(logit_std) and logit_std > 0):
        raise ValueError(f"sample_timesteps: logit_std must be a finite float > 0, got {logit_std!r}")
    if not (isinstance(mix_frac, (int, float)) and 0.0 <= mix_frac <= 1.0):
        raise ValueError(f"sample_timesteps: mix_frac must be in [0, 1], got {mix_frac!r}")
    if not (isinstance(mix_shift, (int, float)) and math.isfinite(mix_shift) and mix_shift > 0):
        raise ValueError(f"sample_timesteps: mix_shift must be a finite float > 0, got {mix_shift!r}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"sample_timesteps: generator is on {generator.device}, device is {device}")
    z = torch.randn(n, generator=generator, device=device, dtype=torch.float32)                # (n,)
    t = torch.sigmoid(z if logit_std == 1.0 else z * logit_std)
    if mix_frac == 0.0:  # no extra draw: the stream of a plain logit-normal is unchanged
        return shift_timesteps(t, shift)
    other = torch.rand(n, generator=generator, device=device, dtype=torch.float32) < mix_frac
    return torch.where(other, shift_timesteps(t, mix_shift), shift_timesteps(t, shift))


def rf_interpolate(clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, *,
                   index: torch.Tensor | None = None) -> torch.Tensor:
    """Noised latents z_t = t * noise + (1 - t) * clean.

    clean, noise: (N, D) float32 / bfloat16 / float16 (same dtype and device).
    t: (N,) per token, or (M,) per image with ``index`` (N,) int64/int32 in [0, M).
    Returns (N, D) in clean's dtype (computed in float32, rounded once). Differentiable w.r.t.
    clean, noise and t (grad_t per image sums its tokens).
    """
    op = "rf_interpolate"
    _check_rows(op, "clean", clean)
    _check_rows(op, "noise", noise, "clean", clean)
    _check_t(op, t, index, clean.shape[0], clean.device)
    if _native(op, clean):
        return torch.ops.procpaint.rf_interpolate(clean, noise, t.to(torch.float32), index)
    return rf_interpolate_ref(clean, noise, t, index)


def rf_mse(pred: torch.Tensor, clean: torch.Tensor, noise: torch.Tensor, *,
           reduction: str = "mean") -> torch.Tensor:
    """Rectified-flow velocity loss against target = noise - clean (recomputed, never stored).

    pred, clean, noise: (N, D) float32 / bfloat16 / float16 (same dtype and device).
    reduction: "none" -> (N,) mean over D per token; "mean" -> () mean over D then over tokens
    (N = 0 gives nan, like torch.mean); "sum" -> () sum over tokens of the per-token mean.
    Returns float32. Differentiable w.r.t. pred, clean and noise. Per-token weights (loss masks,
    per-image weights): reduction="none", then weight the (N,) result -- O(N), no extra pass.
    When pred requires grad (grad mode on), the forward also writes d loss / d pred into an
    (N, D) buffer in pred's dtype, kept for the backward (see the module docstring).
    """
    op = "rf_mse"
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    _check_rows(op, "pred", pred)
    _check_rows(op, "clean", clean, "pred", pred)
    _check_rows(op, "noise", noise, "pred", pred)
    if _native(op, pred):
        if pred.requires_grad and torch.is_grad_enabled():  # training: loss and gradient, one pass
            return torch.ops.procpaint.rf_mse_with_grad(pred, clean, noise, reduction)[0]
        return torch.ops.procpaint.rf_mse(pred, clean, noise, reduction)
    return rf_mse_ref(pred, clean, noise, reduction)


def euler_step(x: torch.Tensor, v: torch.Tensor, dt: float | torch.Tensor) -> torch.Tensor:
    """One Euler step of the sampler toward data: x - v * dt (t runs from 1 to 0, dt > 0).

    x, v: (N, ...) float32 / bfloat16 / float16, same shape, dtype and device.
    dt: Python float, () tensor, or (N,) tensor (one step per token / image row).
    Returns x's shape and dtype (computed in float32).
    """
    op = "euler_step"
    for name, a in (("x", x), ("v", v)):
        if not isinstance(a, torch.Tensor) or a.dtype not in REF_DTYPES:
            raise TypeError(f"{op}: {name} must be a float32/bfloat16/float16/float64 tensor, got "
                            f"{a.dtype if isinstance(a, torch.Tensor) else type(a).__name__}")
        if a.dim() < 1:
            raise ValueError(f"{op}: {name} must have >= 1 dim, got a 0-d tensor")
    if v.dtype != x.dtype:
        raise TypeError(f"{op}: v must have x's dtype {x.dtype}, got {v.dtype}")
    if v.shape != x.shape or v.device != x.device:
        raise ValueError(f"{op}: v must match x in shape and device: x {tuple(x.shape)} {x.device}, "
                         f"v {tuple(v.shape)} {v.device}")
    if isinstance(dt, torch.Tensor):
        if not dt.is_floating_point():
            raise TypeError(f"{op}: dt must be a floating tensor, got {dt.dtype}")
        if dt.dim() > 1 or (dt.dim() == 1 and dt.shape[0] != x.shape[0]):
            raise ValueError(f"{op}: dt must be a float, a 0-d tensor or a ({x.shape[0]},) floating "
                             f"tensor, got {tuple(dt.shape)} {dt.dtype}")
        if dt.device != x.device:
            raise ValueError(f"{op}: dt must be on x's device {x.device}, got {dt.device}")
        if _native(op, x):
            return torch.ops.procpaint.euler_step.dt_tensor(x, v, dt.to(torch.float32))
    elif isinstance(dt, (int, float)) and not isinstance(dt, bool):
        if _native(op, x):
            return torch.ops.procpaint.euler_step(x, v, float(dt))
    else:
        raise TypeError(f"{op}: dt must be a float or a tensor, got {type(dt).__name__}")
    return euler_step_ref(x, v, dt)
