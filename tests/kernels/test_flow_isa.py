"""Both builds of the CPU flow row kernels (csrc/flow/flow_rows.h compiled as a baseline and an
AVX2 version, one picked at run time in csrc/flow/flow_cpu.cpp) compute the same bits. Each build
runs in a subprocess, because the choice is made once per process."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

OPS = torch.ops.procpaint

_ISA_SCRIPT = """
import sys, torch
from procpaint import _ext
_ext.require()
O, out = torch.ops.procpaint, []
for dt, (n, d) in [(torch.float32, (1025, 67)), (torch.bfloat16, (33, 64)), (torch.float16, (7, 3))]:
    g = torch.Generator().manual_seed(0)
    p, c, x = (torch.randn(n, d, generator=g).to(dt) for _ in range(3))
    t = torch.rand(n, generator=g)
    out += [O.rf_interpolate(c, x, t, None), O.euler_step(p, c, 0.1), O.rf_mse(p, c, x, "none"),
            *O.rf_interpolate_backward(p, c, x, t, None, [True, True, True]),
            *O.rf_mse_backward(torch.rand(n, generator=g), p, c, x, "none", [True, False, True])]
torch.save((O.flow_cpu_isa(), out), sys.argv[1])
"""


def test_cpu_isa_builds_agree(native, tmp_path):
    """The CPU row kernels exist twice (baseline and AVX2, csrc/flow/flow_cpu.cpp); the one this
    CPU runs and the forced baseline (PROCPAINT_FLOW_ISA=baseline) must give the same bits."""
    assert OPS.flow_cpu_isa() in ("avx2", "baseline")
    results = {}
    for mode in ("", "baseline"):
        path = tmp_path / f"isa-{mode or 'auto'}.pt"
        env = {**os.environ, "PROCPAINT_FLOW_ISA": mode}
        subprocess.run([sys.executable, "-c", _ISA_SCRIPT, str(path)], env=env, check=True)
        results[mode] = torch.load(path)
    assert results["baseline"][0] == "baseline" and results[""][0] == OPS.flow_cpu_isa()
    for a, b in zip(results[""][1], results["baseline"][1], strict=True):
        assert torch.equal(a, b)
