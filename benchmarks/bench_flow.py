"""Benchmark: rectified-flow training step (interpolate + velocity MSE, forward and backward).

    python benchmarks/bench_flow.py [--quick] [--device cpu|cuda] [--out results.md]

One step = z_t = interp(clean, noise, t); loss = mse(pred, clean, noise); grad of loss w.r.t.
pred. Three implementations in the same run: the fused procpaint ops, the eager PyTorch
reference (``*_ref`` in procpaint/kernels/flow.py, the spec) and ``torch.compile`` of that
reference (timed after warm-up). Bytes that must move: read clean, noise, pred (N D each) and t
(N float32), write z_t and grad (N D each); GB/s counts only those, and ``%copy`` compares it
with ``copy_`` of the same byte volume measured in this run. What the fused path actually moves:
interpolate 3 N D (read clean, noise; write z_t), then rf_mse_with_grad 4 N D (read pred, clean,
noise; write the gradient in the pass that reduces the loss), and a backward that moves nothing
(upstream grad exactly 1: the saved gradient is returned as is): 7 N D, against 10 N D when the
backward re-read pred, clean and noise.

A second table times the two ops as training calls them, each alone: ``rf_interpolate`` in the
model's forward and ``rf_mse`` forward + backward in the loss (the transformer runs between them,
so no implementation can fuse them), fused vs ``torch.compile`` of that op's reference.

Peak extra memory: allocations beyond the step's outputs (z_t, grad, loss). CPU: every CPU
allocator event recorded by torch.profiler(profile_memory=True), summed in time order, peak of
that minus the outputs (the fused loss's O(N / 512) chunk partials live on the C++ stack/heap
outside the allocator and are not counted). CUDA: torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from procpaint import _ext
from procpaint.kernels import flow

TARGETS = ("CPU, N=33000, D=64, float32: fused >= 3x eager and >= 50% of copy_ bandwidth; extra "
           "memory O(N). H100: >= 80% of HBM bandwidth and faster than torch.compile.")


def step_fused(clean, noise, t, pred):
    z = flow.rf_interpolate(clean, noise, t)  # (N, D)
    loss = flow.rf_mse(pred, clean, noise)  # ()
    (grad,) = torch.autograd.grad(loss, pred)  # (N, D)
    return z, loss, grad


def _ref_forward(clean, noise, t, pred):
    return flow.rf_interpolate_ref(clean, noise, t), flow.rf_mse_ref(pred, clean, noise)


def make_ref_step(forward):
    def step(clean, noise, t, pred):
        z, loss = forward(clean, noise, t, pred)
        (grad,) = torch.autograd.grad(loss, pred)
        return z, loss, grad
    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_it(fn, device, min_rep_s=0.05, reps=7):
    """Best (min) seconds per call over `reps` repetitions of an inner loop of >= min_rep_s: on a
    shared machine the minimum is the least disturbed estimate of what the code can do."""
    for _ in range(3):
        fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    inner = max(1, int(min_rep_s / max(time.perf_counter() - t0, 1e-7)))
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync(device)
        times.append((time.perf_counter() - t0) / inner)
    return min(times)


def peak_extra_bytes(fn, device, output_bytes):
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        sync(device)
        del out
        return torch.cuda.max_memory_allocated() - base - output_bytes
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak - output_bytes


def bench_config(n, d, dtype, device, compile_ref=True):
    g = torch.Generator(device=device.type).manual_seed(0)
    clean, noise, pred = (torch.randn(n, d, generator=g, device=device).to(dtype) for _ in range(3))
    pred.requires_grad_()
    t = flow.sample_timesteps(n, generator=g, device=device)  # (N,) float32
    args = (clean, noise, t, pred)
    elem = clean.element_size()
    must_move = 5 * n * d * elem + 4 * n  # read clean/noise/pred/t, write z_t/grad
    out_bytes = 2 * n * d * elem + 4
    src = torch.empty((must_move + 1) // 2, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    copy_s = time_it(lambda: dst.copy_(src), device)  # moves 2 * (must_move / 2) bytes
    copy_gbs = 2 * src.numel() / copy_s / 1e9

    impls = {"fused": step_fused, "eager ref": make_ref_step(_ref_forward)}
    if compile_ref:
        torch._dynamo.reset()
        impls["compiled ref"] = make_ref_step(torch.compile(_ref_forward))
    rows = {}
    for name, fn in impls.items():
        secs = time_it(lambda fn=fn: fn(*args), device)
        extra = peak_extra_bytes(lambda fn=fn: fn(*args), device, out_bytes)
        rows[name] = (secs, extra)
    return rows, must_move, copy_gbs


def bench_split(n, d, dtype, device, compile_ref=True):
    """The two ops as training calls them: ``rf_interpolate`` in the model's forward (z_t feeds the
    transformer) and ``rf_mse`` forward + backward in the loss (pred comes out of the transformer),
    so nothing can fuse the two; each timed alone for fused / eager ref / compiled ref.
    -> {op: {impl: seconds}}."""
    g = torch.Generator(device=device.type).manual_seed(0)
    clean, noise, pred = (torch.randn(n, d, generator=g, device=device).to(dtype) for _ in range(3))
    pred.requires_grad_()
    t = flow.sample_timesteps(n, generator=g, device=device)  # (N,) float32

    def mse_step(fn):
        def step():
            loss = fn(pred, clean, noise)
            return torch.autograd.grad(loss, pred)[0]  # (N, D)
        return step

    impls = {"fused": (lambda: flow.rf_interpolate(clean, noise, t), mse_step(flow.rf_mse)),
             "eager ref": (lambda: flow.rf_interpolate_ref(clean, noise, t), mse_step(flow.rf_mse_ref))}
    if compile_ref:
        torch._dynamo.reset()
        ci, cm = torch.compile(flow.rf_interpolate_ref), torch.compile(flow.rf_mse_ref)
        impls["compiled ref"] = (lambda: ci(clean, noise, t), mse_step(cm))
    out = {"interpolate": {}, "mse fwd+bwd": {}, "both (training step)": {}}
    for name, (interp, mse) in impls.items():
        out["interpolate"][name] = time_it(interp, device)
        out["mse fwd+bwd"][name] = time_it(mse, device)
        out["both (training step)"][name] = out["interpolate"][name] + out["mse fwd+bwd"][name]
    return out


def cpu_isa(native: bool) -> str:
    """Which build of the CPU row kernels runs (csrc/flow/flow_cpu.cpp picks it from the CPU's
    features; PROCPAINT_FLOW_ISA=baseline forces the baseline), plus the CPU's AVX2 flag."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        flags = []
    cpu = "cpu has avx2" if "avx2" in flags else "cpu lacks avx2" if flags else "cpu flags unknown"
    if not native or not hasattr(torch.ops.procpaint, "flow_cpu_isa"):
        return f"reference (no native CPU kernels); {cpu}"
    return f"{torch.ops.procpaint.flow_cpu_isa()} row kernels; {cpu}"


def machine() -> str:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N=33000, D=64 only")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--out", help="write a markdown table here")
    a = ap.parse_args(argv)
    if os.environ.get("PROCPAINT_REQUIRE_EXT", "0") == "1":
        _ext.require()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    native = _ext.has_kernel("rf_mse", device)
    ns, ds = ((33_000,), (64,)) if a.quick else ((4_096, 33_000, 131_072), (64, 48))
    header = ("| N | D | dtype | impl | ms | x eager | x compiled | GB/s | % copy_ | pass % copy_ "
              "| extra MB |\n|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = []
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    isa = cpu_isa(_ext.has_kernel("rf_mse", "cpu"))
    print(f"machine: {machine()}; load average {load:.1f}; torch {torch.__version__}; "
          f"native kernels: {native}; CPU kernel ISA: {isa}")
    print(f"targets: {TARGETS}")
    print(header)
    for dtype in (torch.float32, torch.bfloat16):
        for d in ds:
            for n in ns:
                rows, must_move, copy_gbs = bench_config(n, d, dtype, device, not a.no_compile)
                eager = rows["eager ref"][0]
                comp = rows.get("compiled ref", (float("nan"),))[0]
                for name, (secs, extra) in rows.items():
                    gbs = must_move / secs / 1e9
                    passes = f"{100 * 2 * gbs / copy_gbs:.0f}%" if name == "fused" else ""
                    line = (f"| {n} | {d} | {str(dtype).removeprefix('torch.')} | {name} | "
                            f"{secs * 1e3:.3f} | {eager / secs:.2f} | {comp / secs:.2f} | {gbs:.2f} | "
                            f"{100 * gbs / copy_gbs:.0f}% | {passes} | {extra / 2**20:.2f} |")
                    lines.append(line)
                    print(line, flush=True)
                line = (f"| {n} | {d} | {str(dtype).removeprefix('torch.')} | copy_ (same bytes) | "
                        f"{must_move / copy_gbs / 1e6:.3f} | | | {copy_gbs:.2f} | 100% | | |")
                lines.append(line)
                print(line, flush=True)
    split_header = ("| N | D | dtype | op | fused ms | compiled ref ms | eager ref ms | fused x compiled "
                    "| fused x eager |\n|---:|---:|---|---|---:|---:|---:|---:|---:|")
    split_lines = []
    print("\nAs training calls them (each op alone; nothing fuses interpolate with the loss):")
    print(split_header)
    for dtype in (torch.float32, torch.bfloat16):
        for d in ds:
            for n in ns:
                res = bench_split(n, d, dtype, device, not a.no_compile)
                for op, times in res.items():
                    fz, ea = times["fused"], times["eager ref"]
                    co = times.get("compiled ref", float("nan"))
                    line = (f"| {n} | {d} | {str(dtype).removeprefix('torch.')} | {op} | {fz * 1e3:.3f} | "
                            f"{co * 1e3:.3f} | {ea * 1e3:.3f} | {co / fz:.2f} | {ea / fz:.2f} |")
                    split_lines.append(line)
                    print(line, flush=True)
    if a.out:
        cmd = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
        body = (f"# bench_flow ({device.type})\n\n- date: {datetime.date.today().isoformat()}\n"
                f"- machine: {machine()} (1-min load average at start: {load:.1f})\n"
                f"- torch: {torch.__version__}\n- command: `{cmd}`\n"
                f"- native kernels: {native}\n- CPU kernel ISA: {isa}\n- targets: {TARGETS}\n\n"
                "## One step: interpolate + loss forward + backward in one graph\n\n"
                "The compiled reference compiles both ops as one graph here, so it reads clean and noise "
                "once for both; training cannot (pred comes out of the transformer, which z_t feeds).\n\n"
                f"{header}\n" + "\n".join(lines) + "\n\n"
                "## As training calls them: each op alone (fused vs compiled ref of that op)\n\n"
                f"{split_header}\n" + "\n".join(split_lines) + "\n")
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(body)
        os.replace(tmp, a.out)  # never a half-written table


if __name__ == "__main__":
    main()
