"""Rectified-flow ops (procpaint/kernels/flow.py, csrc/flow/): kernels against the float64
reference with torch's own same-dtype error as the yardstick, gradients, opcheck, torch.compile,
per-image timesteps, edge cases, error messages and the timestep distribution."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.library import opcheck
from torch.utils._python_dispatch import TorchDispatchMode

from procpaint.kernels import flow

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(n, d) for n in (1, 7, 1025) for d in (1, 3, 64, 67)] + [(33000, 64), (33000, 67)]
OPS = torch.ops.procpaint


def _err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return (x.double() - ref.double()).abs().max().item() if x.numel() else 0.0


def _assert_close_as_torch(kernel, torch_same, ref, what):
    """err_kernel <= 2 * err_torch_same_dtype, plus a few float32 ulps at the output scale so an
    exact torch result cannot fail a kernel that is off by float32 rounding."""
    scale = max(1.0, ref.double().abs().max().item()) if ref.numel() else 1.0
    e_k, e_t = _err(kernel, ref), _err(torch_same, ref)
    assert e_k <= 2 * e_t + 4 * torch.finfo(torch.float32).eps * scale, f"{what}: {e_k=} {e_t=}"


def _inputs(n, d, dtype, k=3, device="cpu"):
    return [torch.randn(n, d, device=device).to(dtype) for _ in range(k)]


# --------------------------------------------------------------------------- forward accuracy
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,d", SHAPES)
def test_interpolate_matches_reference(native, n, d, dtype):
    clean, noise = _inputs(n, d, dtype, 2)
    t = torch.rand(n)
    z = flow.rf_interpolate(clean, noise, t)
    ref = flow.rf_interpolate_ref(clean.double(), noise.double(), t.double())
    ts = t.to(dtype)[:, None]
    _assert_close_as_torch(z, ts * noise + (1 - ts) * clean, ref, "z_t")
    assert z.dtype == dtype and z.shape == (n, d)


@pytest.mark.parametrize("reduction", flow.REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,d", SHAPES)
def test_mse_matches_reference(native, n, d, dtype, reduction):
    pred, clean, noise = _inputs(n, d, dtype)
    loss = flow.rf_mse(pred, clean, noise, reduction=reduction)
    ref = flow.rf_mse_ref(pred.double(), clean.double(), noise.double(), reduction)
    same = (pred - (noise - clean)).square().mean(-1)  # all in `dtype`, torch's own error
    same = same if reduction == "none" else (same.mean() if reduction == "mean" else same.sum())
    _assert_close_as_torch(loss, same, ref, f"loss/{reduction}")
    assert loss.dtype == torch.float32 and loss.shape == ref.shape


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dt_kind", ["float", "scalar", "rows"])
def test_euler_step_matches_reference(native, dtype, dt_kind):
    x, v = _inputs(1025, 67, dtype, 2)
    dt = {"float": 0.02, "scalar": torch.tensor(0.02), "rows": torch.rand(1025) * 0.1}[dt_kind]
    out = flow.euler_step(x, v, dt)
    dt64 = dt.double() if isinstance(dt, torch.Tensor) else dt
    ref = flow.euler_step_ref(x.double(), v.double(), dt64)
    dts = dt.to(dtype) if isinstance(dt, torch.Tensor) else dt
    dts = dts[:, None] if isinstance(dts, torch.Tensor) and dts.dim() == 1 else dts
    _assert_close_as_torch(out, x - v * dts, ref, "euler")
    x3 = torch.randn(4, 5, 6).to(dtype)  # (N, ...) with a (N,) dt
    out3 = flow.euler_step(x3, x3, torch.full((4,), 0.5))
    torch.testing.assert_close(out3, flow.euler_step_ref(x3, x3, torch.full((4,), 0.5)))


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("per_image", [False, True])
def test_gradcheck_reference_path(per_image):
    """float64 routes to the reference: the spec's gradients, checked numerically."""
    g = torch.Generator().manual_seed(1)
    c, n, p = (torch.randn(6, 3, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(3))
    index = torch.tensor([0, 0, 1, 2, 2, 2]) if per_image else None
    t = torch.rand(3 if per_image else 6, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c, n, t: flow.rf_interpolate(c, n, t, index=index), (c, n, t))
    for red in flow.REDUCTIONS:
        assert torch.autograd.gradcheck(lambda p, c, n, red=red: flow.rf_mse(p, c, n, reduction=red),
                                        (p, c, n))
    dt = torch.rand(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(flow.euler_step, (p, c, dt))


def _grads(fn, tensors, upstream):
    out = fn(*tensors)
    return torch.autograd.grad(out, tensors, upstream)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,d", [(7, 3), (1025, 67), (1025, 64)])
@pytest.mark.parametrize("per_image", [False, True])
def test_interpolate_grads(native, n, d, dtype, per_image):
    clean, noise = _inputs(n, d, dtype, 2)
    index = torch.randint(0, 5, (n,)) if per_image else None
    t = torch.rand(5 if per_image else n)
    up = torch.randn(n, d).to(dtype)

    def run(c, nz, tt, u, cast):
        leaves = [x.detach().requires_grad_() for x in (c, nz, tt)]
        if cast is None:
            return _grads(lambda *a: flow.rf_interpolate(*a, index=index), leaves, u)
        return _grads(lambda c, nz, tt: flow.rf_interpolate_ref(c, nz, tt.to(cast), index), leaves, u)

    kern = run(clean, noise, t, up, None)
    ref = run(clean.double(), noise.double(), t.double(), up.double(), torch.float64)
    same = run(clean, noise, t, up, dtype)  # reference algebra evaluated in `dtype`
    for name, k, r, s in zip(("clean", "noise", "t"), kern, ref, same):
        assert k.dtype == (torch.float32 if name == "t" else dtype)
        _assert_close_as_torch(k, s, r, f"grad {name}")


def _mse_same_dtype(p, c, n, reduction):
    per = (p - (n - c)).square().mean(-1)
    return per if reduction == "none" else (per.mean() if reduction == "mean" else per.sum())


@pytest.mark.parametrize("upstream", ["one", "other"])
@pytest.mark.parametrize("reduction", flow.REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,d", [(1, 1), (7, 3), (1025, 67)])
def test_mse_grads(native, n, d, dtype, reduction, upstream):
    """The training path (rf_mse_with_grad: pred requires grad) against the reference's autograd,
    for an upstream grad of exactly 1 (the saved gradient returned as is) and another one."""
    tensors = _inputs(n, d, dtype)
    if upstream == "one":
        up = torch.ones(n) if reduction == "none" else torch.tensor(1.0)
    else:
        up = torch.rand(n) if reduction == "none" else torch.tensor(1.7)

    def run(fn, cast, up_dtype):
        leaves = [x.detach().to(cast).requires_grad_() for x in tensors]
        return _grads(lambda *a: fn(*a, reduction), leaves, up.to(up_dtype))

    kern = run(lambda p, c, n, r: flow.rf_mse(p, c, n, reduction=r), dtype, torch.float32)
    ref = run(flow.rf_mse_ref, torch.float64, torch.float64)
    same = run(_mse_same_dtype, dtype, dtype)  # loss and its backward evaluated in `dtype`
    for name, k, r, s in zip(("pred", "clean", "noise"), kern, ref, same):
        _assert_close_as_torch(k, s, r, f"grad {name}")


def test_mse_backward_subsets(native):
    """Only the requested gradients are computed; clean's equals pred's, noise's is its negative."""
    p, c, n = _inputs(33, 5, torch.float32)
    g = torch.tensor(1.0)
    gp, gc, gn = OPS.rf_mse_backward(g, p, c, n, "mean", [False, True, False])
    assert gp.numel() == 0 and gn.numel() == 0 and gc.shape == (33, 5)
    gp, _, gn = OPS.rf_mse_backward(g, p, c, n, "mean", [True, False, True])
    torch.testing.assert_close(gn, -gp)
    torch.testing.assert_close(gp, 2 * (p - (n - c)) / p.numel())


_WITH_GRAD_SCRIPT = """
import sys, torch
from procpaint import _ext
_ext.require()
O, bad = torch.ops.procpaint, []
for dt in (torch.float32, torch.bfloat16, torch.float16):
    for n, d in ((1, 1), (7, 3), (33, 64), (1025, 67)):
        g = torch.Generator().manual_seed(n + d)
        p, c, x = (torch.randn(n, d, generator=g).to(dt) for _ in range(3))
        p[0, 0] = float("nan") if n * d > 8 else p[0, 0]  # NaN rounds to NaN in the vector store
        for red in ("none", "mean", "sum"):
            loss, gp = O.rf_mse_with_grad(p, c, x, red)
            one = torch.ones(n) if red == "none" else torch.tensor(1.0)
            ref = O.rf_mse_backward(one, p, c, x, red, [True, False, False])[0]
            if not (torch.equal(loss.nan_to_num(7.0), O.rf_mse(p, c, x, red).nan_to_num(7.0))
                    and torch.equal(gp.nan_to_num(7.0), ref.nan_to_num(7.0))
                    and gp.isnan().sum() == ref.isnan().sum()):
                bad.append((str(dt), n, d, red))
print(O.flow_cpu_isa(), bad)
assert not bad, bad
"""


@pytest.mark.parametrize("isa", ["", "baseline"])
def test_mse_with_grad_is_bit_equal_to_the_two_pass_ops(native, isa):
    """rf_mse_with_grad's loss is rf_mse's and its gradient is rf_mse_backward's for an upstream
    grad of 1, bit for bit, on the CPU's own build of the row kernels and on the baseline one
    (PROCPAINT_FLOW_ISA is read once per process: a subprocess each)."""
    env = {**os.environ, "PROCPAINT_FLOW_ISA": isa}
    proc = subprocess.run([sys.executable, "-c", _WITH_GRAD_SCRIPT], env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split()[0] == (isa or OPS.flow_cpu_isa())


class _OpLog(TorchDispatchMode):
    """Names of the ops that reach the dispatcher below autograd."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def _log(fn):
    with _OpLog() as log:
        out = fn()
    return out, log.names


def test_mse_gradient_buffer_only_when_pred_requires_grad(native):
    """No (N, D) gradient buffer without grad; with it, one forward op and a backward that does
    no pass at all for loss.backward() (upstream 0-d 1.0 on CPU)."""
    p, c, n = _inputs(33, 8, torch.bfloat16)
    _, names = _log(lambda: flow.rf_mse(p, c, n))  # pred does not require grad
    assert "procpaint::rf_mse" in names and "procpaint::rf_mse_with_grad" not in names
    leaf = p.detach().requires_grad_()
    with torch.no_grad():
        _, names = _log(lambda: flow.rf_mse(leaf, c, n))
    assert "procpaint::rf_mse" in names and "procpaint::rf_mse_with_grad" not in names
    # clean / noise alone require grad: the two-pass path (nothing saved but the inputs)
    c_leaf = c.detach().requires_grad_()
    loss, names = _log(lambda: flow.rf_mse(p, c_leaf, n))
    assert "procpaint::rf_mse_with_grad" not in names
    _, names = _log(lambda: loss.backward())
    assert "procpaint::rf_mse_backward" in names
    torch.testing.assert_close(c_leaf.grad, OPS.rf_mse_backward(torch.tensor(1.0), p, c, n, "mean",
                                                                [True, False, False])[0])
    # pred requires grad: loss and gradient in one op; backward with exactly 1 runs nothing
    loss, names = _log(lambda: flow.rf_mse(leaf, c, n))
    assert names.count("procpaint::rf_mse_with_grad") == 1 and "procpaint::rf_mse" not in names
    _, names = _log(lambda: loss.backward())
    # nothing that writes an (N, D) buffer: no kernel, no multiply, no zeros materialised for the
    # gradient output's (unused) upstream grad
    assert not [x for x in names if x.startswith("procpaint::")
                or x.split(".")[0] in ("aten::mul", "aten::zeros", "aten::zero_", "aten::fill_",
                                       "aten::zeros_like")], names
    loss2, g = OPS.rf_mse_with_grad(p, c, n, "mean")
    assert torch.equal(leaf.grad, g) and torch.equal(loss.detach(), loss2)
    # any other upstream grad: one multiply, no kernel
    leaf.grad = None
    loss = flow.rf_mse(leaf, c, n, reduction="none")
    up = torch.rand(33)
    _, names = _log(lambda: loss.backward(up))
    assert not [x for x in names if x.startswith("procpaint::")]
    assert [x for x in names if x.startswith("aten::mul")] == ["aten::mul.out"]
    g_none = OPS.rf_mse_with_grad(p, c, n, "none")[1]
    assert torch.equal(leaf.grad, (g_none.float() * up[:, None]).bfloat16())  # float32, one rounding


def test_mse_repeated_backward_accumulates(native):
    """The saved gradient may become pred.grad itself (no copy): backward again through a retained
    graph must still accumulate the right values, not scale the saved buffer in place."""
    p, c, n = _inputs(17, 9, torch.float32)
    leaf = p.detach().requires_grad_()
    loss = flow.rf_mse(leaf, c, n, reduction="sum")
    for _ in range(3):
        loss.backward(retain_graph=True)
    ref = p.detach().requires_grad_()
    torch.autograd.backward(flow.rf_mse_ref(ref, c, n, "sum"))
    torch.testing.assert_close(leaf.grad, 3 * ref.grad)
    # pred and clean both leaves: their .grad must be two tensors, so accumulating into one (a second
    # backward) cannot change the other
    a, b = p.detach().requires_grad_(), c.detach().requires_grad_()
    loss = flow.rf_mse(a, b, n, reduction="sum")
    loss.backward(retain_graph=True)
    assert a.grad.data_ptr() != b.grad.data_ptr()
    loss.backward()
    ra, rb = p.detach().requires_grad_(), c.detach().requires_grad_()
    torch.autograd.backward(flow.rf_mse_ref(ra, rb, n, "sum"))
    torch.testing.assert_close(a.grad, 2 * ra.grad)
    torch.testing.assert_close(b.grad, 2 * rb.grad)


# --------------------------------------------------------------------------- per image, edges
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_per_image_t_matches_expanded(native, index_dtype):
    clean, noise = _inputs(1025, 64, torch.bfloat16, 2)
    t = torch.rand(9)
    index = torch.randint(0, 9, (1025,), dtype=index_dtype)
    z = flow.rf_interpolate(clean, noise, t, index=index)
    torch.testing.assert_close(z, flow.rf_interpolate(clean, noise, t[index.long()]), rtol=0, atol=0)


def test_empty_and_degenerate(native):
    for dtype in DTYPES:
        p, c, n = _inputs(0, 64, dtype)
        assert flow.rf_interpolate(c, n, torch.rand(0)).shape == (0, 64)
        assert flow.rf_mse(p, c, n, reduction="none").shape == (0,)
        assert math.isnan(flow.rf_mse(p, c, n).item())  # like torch.mean of nothing
        assert flow.rf_mse(p, c, n, reduction="sum").item() == 0.0
        leaves = [x.requires_grad_() for x in (p, c, n)]
        flow.rf_mse(*leaves, reduction="sum").backward()
        assert all(x.grad.shape == (0, 64) for x in leaves)
        assert flow.euler_step(p, c, 0.1).shape == (0, 64)
    # t = 0 and t = 1 are exact endpoints (1 - t) * clean + t * noise
    clean, noise = _inputs(4, 3, torch.float16, 2)
    z = flow.rf_interpolate(clean, noise, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert torch.equal(z[0::2], clean[0::2]) and torch.equal(z[1::2], noise[1::2])


def test_non_contiguous_inputs(native):
    wide = torch.randn(3, 1025, 80)
    clean, noise, pred = wide[0, :, 5:72], wide[1, :, :67], wide[2].t().contiguous().t()[:, :67]
    t = torch.rand(2050)[::2]  # strided t
    torch.testing.assert_close(flow.rf_interpolate(clean, noise, t),
                               flow.rf_interpolate_ref(clean, noise, t), rtol=0, atol=0)
    transposed = torch.randn(67, 1025).t()  # column stride != 1: copied once inside
    for red in flow.REDUCTIONS:
        torch.testing.assert_close(flow.rf_mse(pred, clean, transposed, reduction=red),
                                   flow.rf_mse_ref(pred, clean, transposed, red))
    leaf = clean.detach().requires_grad_()
    flow.rf_interpolate(leaf, noise, t).sum().backward()  # upstream grad is an expanded tensor
    torch.testing.assert_close(leaf.grad, (1 - t)[:, None].expand(1025, 67))


# --------------------------------------------------------------------------- registration
def _opcheck_samples():
    c, n, p = (torch.randn(37, 67, requires_grad=True) for _ in range(3))
    t, ti = torch.rand(37, requires_grad=True), torch.rand(4, requires_grad=True)
    idx = torch.randint(0, 4, (37,), dtype=torch.int32)
    e = torch.randn(0, 8)
    yield OPS.rf_interpolate.default, (c, n, t, None)
    yield OPS.rf_interpolate.default, (c.detach().bfloat16(), n.detach().bfloat16(), ti, idx)
    yield OPS.rf_interpolate.default, (e, e, torch.rand(0), None)
    yield OPS.rf_interpolate_backward.default, (p.detach(), c.detach(), n.detach(), ti.detach(), idx.long(),
                                                [True, False, True])
    for red in flow.REDUCTIONS:
        yield OPS.rf_mse.default, (p, c, n, red)
    yield OPS.rf_mse.default, (p.detach().half(), c.detach().half(), n.detach().half(), "none")
    yield OPS.rf_mse_backward.default, (torch.rand(37), p.detach(), c.detach(), n.detach(), "none",
                                        [True, True, True])
    for red in flow.REDUCTIONS:
        yield OPS.rf_mse_with_grad.default, (p, c, n, red)
    yield OPS.rf_mse_with_grad.default, (p.detach().bfloat16().requires_grad_(), c.detach().bfloat16(),
                                         n.detach().bfloat16(), "mean")
    yield OPS.rf_mse_with_grad.default, (e.requires_grad_(), e, e, "sum")
    yield OPS.euler_step.default, (p, c, 0.25)
    yield OPS.euler_step.dt_tensor, (p, c, torch.rand(37, requires_grad=True))


def test_opcheck_all_ops(native):
    seen = set()
    for op, args in _opcheck_samples():
        opcheck(op, args)
        seen.add(op._name)
    assert seen == {"procpaint::rf_interpolate", "procpaint::rf_interpolate_backward",
                    "procpaint::rf_mse", "procpaint::rf_mse_backward", "procpaint::rf_mse_with_grad",
                    "procpaint::euler_step",
                    "procpaint::euler_step.dt_tensor"}


def test_torch_compile_traces_public_functions(native):
    def step(clean, noise, pred, t, index):
        z = flow.rf_interpolate(clean, noise, t, index=index)  # (N, D)
        loss = flow.rf_mse(pred + 0.1 * z, clean, noise)
        return loss + flow.euler_step(z, pred, 0.1).float().square().mean()

    compiled = torch.compile(step, fullgraph=True)
    c, n, p = (torch.randn(300, 64, requires_grad=True) for _ in range(3))
    t, index = torch.rand(3, requires_grad=True), torch.randint(0, 3, (300,))
    eager_loss = step(c, n, p, t, index)
    eager = torch.autograd.grad(eager_loss, (c, n, p, t))
    comp_loss = compiled(c, n, p, t, index)
    comp = torch.autograd.grad(comp_loss, (c, n, p, t))
    torch.testing.assert_close(comp_loss, eager_loss)
    for a, b in zip(comp, eager):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("call,exc,match", [
    (lambda c, n, t: flow.rf_interpolate(c, n[:, :2], t), ValueError, "noise must have the shape of clean"),
    (lambda c, n, t: flow.rf_interpolate(c, n.half(), t), TypeError, "noise must have the dtype of clean"),
    (lambda c, n, t: flow.rf_interpolate(c, n, t[:4]), ValueError, r"t must have shape \(5,\)"),
    (lambda c, n, t: flow.rf_interpolate(c[0], n[0], t), ValueError, r"clean must have shape \(N, D\)"),
    (lambda c, n, t: flow.rf_interpolate(c.int(), n.int(), t), TypeError, "clean must be float32"),
    (lambda c, n, t: flow.rf_interpolate(c, n, t[:2], index=torch.tensor([0, 1, 2, 0, 1])), IndexError,
     "index value 2 is out of range"),
    (lambda c, n, t: flow.rf_interpolate(c, n, t[:2], index=torch.zeros(5)), TypeError,
     "index must be an int64"),
    (lambda c, n, t: flow.rf_interpolate(c, n, t[:2], index=torch.zeros(4, dtype=torch.long)), ValueError,
     r"index must have shape \(5,\)"),
    (lambda c, n, t: flow.rf_mse(c, c, n, reduction="avg"), ValueError, "reduction must be one of"),
    (lambda c, n, t: flow.rf_mse(c, c.bfloat16(), n), TypeError, "clean must have the dtype of pred"),
    (lambda c, n, t: flow.rf_mse(c, c, n.t()), ValueError, "noise must have the shape of pred"),
    (lambda c, n, t: flow.euler_step(c, n, torch.rand(3)), ValueError, "dt must be a float, a 0-d tensor"),
    (lambda c, n, t: flow.euler_step(c, n, torch.ones(5, dtype=torch.long)), TypeError,
     "dt must be a floating tensor"),
    (lambda c, n, t: flow.euler_step(c, n, "0.1"), TypeError, "dt must be a float or a tensor"),
    (lambda c, n, t: flow.euler_step(c.int(), n.int(), 0.1), TypeError, "x must be a float32"),
    (lambda c, n, t: flow.euler_step(c, n.double(), 0.1), TypeError, "v must have x's dtype"),
    (lambda c, n, t: flow.euler_step(c, n[:4], 0.1), ValueError, "v must match x in shape"),
])
def test_public_errors_name_the_argument(call, exc, match):
    """Python front ends raise what the native checks raise (csrc/common/checks.h): TypeError for
    types and dtypes, ValueError for shapes, sizes, devices and values, IndexError for index data."""
    c, n = torch.randn(5, 3), torch.randn(5, 3)
    with pytest.raises(exc, match=match):
        call(c, n, torch.rand(5))


# Bad direct calls of the native ops: (call on tensors of one device, error type, message). The
# types follow csrc/common/checks.h: ValueError for shapes, sizes, devices and values, TypeError
# for dtypes (IndexError for index data: CPU kernel only, below).
NATIVE_BAD_CALLS = [
    (lambda c, n: OPS.rf_interpolate(c, n, torch.rand(5, device=c.device).double(), None),
     TypeError, "rf_interpolate: t must be float32"),
    (lambda c, n: OPS.rf_interpolate(c, n[:4], torch.rand(5, device=c.device), None),
     ValueError, "rf_interpolate: noise must have the shape of clean"),
    (lambda c, n: OPS.rf_interpolate_backward(c, c, n.half(), torch.rand(5, device=c.device), None,
                                              [True, True, True]),
     TypeError, "rf_interpolate_backward: noise must have the dtype of clean"),
    (lambda c, n: OPS.rf_interpolate_backward(c[:, :2], c, n, torch.rand(5, device=c.device), None,
                                              [True, True, True]),
     ValueError, "rf_interpolate_backward: grad must have the shape of clean"),
    (lambda c, n: OPS.rf_interpolate(c, n, torch.rand(2, device=c.device),
                                     torch.zeros(5, device=c.device)),
     TypeError, "rf_interpolate: index must be int64 or int32"),
    (lambda c, n: OPS.rf_mse(c, c, n, "avg"),
     ValueError, "rf_mse: reduction must be 'none', 'mean' or 'sum'"),
    (lambda c, n: OPS.rf_mse(c, c, n.half(), "mean"), TypeError, "rf_mse: noise must have the dtype of pred"),
    (lambda c, n: OPS.rf_mse(c[0], c[0], n[0], "mean"), ValueError, r"rf_mse: pred must have shape \(N, D\)"),
    (lambda c, n: OPS.rf_mse_backward(torch.tensor(1.0, device=c.device), c, c, n, "none",
                                      [True, True, True]),
     ValueError, r"rf_mse_backward: grad must have shape \(5,\)"),
    (lambda c, n: OPS.rf_mse_backward(torch.ones(5, device=c.device).double(), c, c, n, "none",
                                      [True, True, True]),
     TypeError, "rf_mse_backward: grad must be float32"),
    (lambda c, n: OPS.rf_mse_with_grad(c, c, n, "avg"),
     ValueError, "rf_mse_with_grad: reduction must be 'none', 'mean' or 'sum'"),
    (lambda c, n: OPS.rf_mse_with_grad(c, c.bfloat16(), n, "sum"),
     TypeError, "rf_mse_with_grad: clean must have the dtype of pred"),
    (lambda c, n: OPS.rf_mse_with_grad(c, c, n[:, :2], "none"),
     ValueError, "rf_mse_with_grad: noise must have the shape of pred"),
    (lambda c, n: OPS.euler_step(c, n[:2], 0.1), ValueError, "euler_step: v must have the shape of x"),
    (lambda c, n: OPS.euler_step(c.int(), n.int(), 0.1), TypeError, "euler_step: x must be float32"),
]


@pytest.mark.parametrize("call,error,match", NATIVE_BAD_CALLS)
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_native_errors_name_the_argument(native, device, call, error, match):
    """CPU kernels and Meta implementations run the same checks (csrc/flow/flow_checks.h)."""
    c, n = torch.randn(5, 3, device=device), torch.randn(5, 3, device=device)
    with pytest.raises(error, match=match):
        call(c, n)


def test_native_index_out_of_range_is_an_index_error(native):
    c, n = torch.randn(5, 3), torch.randn(5, 3)
    with pytest.raises(IndexError, match=r"rf_interpolate: index\[1\] = 7 is out of range"):
        OPS.rf_interpolate(c, n, torch.rand(2), torch.tensor([0, 7, 1, 0, 1]))


# --------------------------------------------------------------------------- timesteps
def _shifted(t: np.ndarray, s: float) -> np.ndarray:
    return s * t / (1 + (s - 1) * t)


@pytest.mark.parametrize("shift,std", [(1.0, 1.0), (3.0, 1.0), (0.5, 1.0), (20.0, 2.0), (1.0, 0.5)])
def test_sample_timesteps_distribution(shift, std):
    """Quantiles follow from the normal's (the shift is monotone); the mean is a Gauss-Hermite
    integral in float64. 200K samples: tolerances are > 5 standard errors."""
    t = flow.sample_timesteps(200_000, shift=shift, logit_std=std, generator=torch.Generator().manual_seed(7))
    assert t.dtype == torch.float32 and t.shape == (200_000,)
    assert 0.0 <= t.min().item() and t.max().item() <= 1.0
    x, w = np.polynomial.hermite_e.hermegauss(80)  # E[f(Z)] = sum w f(x) / sqrt(2 pi)
    mean = float((w * _shifted(1 / (1 + np.exp(-std * x)), shift)).sum() / math.sqrt(2 * math.pi))
    assert abs(t.double().mean().item() - mean) < 0.004
    qs = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)
    z = torch.distributions.Normal(0.0, std).icdf(qs).numpy()
    expect = _shifted(1 / (1 + np.exp(-z)), shift)
    # empirical CDF at the closed-form quantiles must be the quantile level (DKW-style)
    cdf = (t.double()[None, :] <= torch.from_numpy(expect)[:, None]).double().mean(1)
    assert (cdf - qs).abs().max().item() < 0.006


@pytest.mark.parametrize("frac", [0.25, 0.5, 1.0])
def test_sample_timesteps_mixture(frac):
    """A two-shift mixture: its CDF is the mixture of the two shifted logit-normals' CDFs, and
    ``mix_frac=0`` leaves the plain stream bit-identical (no extra draw)."""
    s1, s2 = 50.0, 3.0
    t = flow.sample_timesteps(200_000, shift=s1, mix_frac=frac, mix_shift=s2,
                              generator=torch.Generator().manual_seed(11))
    assert t.dtype == torch.float32 and 0.0 <= t.min().item() and t.max().item() <= 1.0
    grid = np.array([0.2, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99])
    normal = torch.distributions.Normal(0.0, 1.0)

    def cdf(x: np.ndarray, s: float) -> np.ndarray:  # P(shift(sigmoid(Z), s) <= x): invert the shift
        u = x / (s - (s - 1) * x)
        return normal.cdf(torch.from_numpy(np.log(u / (1 - u)))).numpy()

    expect = (1 - frac) * cdf(grid, s1) + frac * cdf(grid, s2)
    got = (t.double()[None, :] <= torch.from_numpy(grid)[:, None]).double().mean(1).numpy()
    assert np.abs(got - expect).max() < 0.006
    plain = flow.sample_timesteps(1000, shift=s1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(plain, flow.sample_timesteps(1000, shift=s1, mix_frac=0.0, mix_shift=s2,
                                                    generator=torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="mix_frac must be in"):
        flow.sample_timesteps(4, mix_frac=1.5)
    with pytest.raises(ValueError, match="mix_shift must be a finite float > 0"):
        flow.sample_timesteps(4, mix_frac=0.5, mix_shift=-1.0)


def test_sample_timesteps_reproducible_and_validated():
    a = flow.sample_timesteps(1000, shift=2.0, generator=torch.Generator().manual_seed(3))
    b = flow.sample_timesteps(1000, shift=2.0, generator=torch.Generator().manual_seed(3))
    c = flow.sample_timesteps(1000, shift=2.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert flow.sample_timesteps(0).shape == (0,)
    with pytest.raises(ValueError, match="shift must be a finite float > 0"):
        flow.sample_timesteps(4, shift=0.0)
    with pytest.raises(ValueError, match="logit_std must be a finite float > 0"):
        flow.sample_timesteps(4, logit_std=float("nan"))
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        flow.sample_timesteps(-1)


# --------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,d", [(1, 1), (7, 3), (1025, 67), (33000, 64)])
def test_cuda_matches_cpu_reference(native, n, d, dtype):
    p, c, nz = _inputs(n, d, dtype, device="cuda")
    index = torch.randint(0, 3, (n,), device="cuda")
    t = torch.rand(3, device="cuda")
    _assert_close_as_torch(flow.rf_interpolate(c, nz, t, index=index),
                           t[index].to(dtype)[:, None] * nz + (1 - t[index].to(dtype)[:, None]) * c,
                           flow.rf_interpolate_ref(c.double(), nz.double(), t.double(), index), "cuda z_t")
    for red in flow.REDUCTIONS:
        _assert_close_as_torch(flow.rf_mse(p, c, nz, reduction=red), _mse_same_dtype(p, c, nz, red),
                               flow.rf_mse_ref(p.double(), c.double(), nz.double(), red), f"cuda {red}")
    leaves = [x.detach().requires_grad_() for x in (p, c, nz)]
    flow.rf_mse(*leaves).backward()
    torch.testing.assert_close(leaves[0].grad.double(),
                               2 * (p.double() - (nz.double() - c.double())) / max(p.numel(), 1),
                               atol=1e-2 if dtype != torch.float32 else 1e-6, rtol=1e-2)
    for op, args in _opcheck_samples():
        opcheck(op, tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args))
