"""Builds the native extension ``procpaint._C`` from ``csrc/`` (metadata lives in pyproject.toml).

    pip install torch==2.13.0 && pip install --no-build-isolation -e ".[dev]"

Sources are globbed (see csrc/ops.cpp for the layout): every ``*.cpp`` except the CUDA glue
(``*_cuda.cpp``) always; ``*.cu`` and ``*_cuda.cpp`` only in CUDA builds. ``--no-build-isolation``
matters: an isolated build would fetch its own (multi-GB, possibly different) torch.
"""

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"

# Environment flags, read once here.
#   PROCPAINT_SKIP_EXT=1    build no native code at all; every op uses its PyTorch reference.
#   PROCPAINT_FORCE_CUDA=1  build the CUDA sources even if torch/toolkit detection says no GPU
#                           build (e.g. cross-building on a machine without a GPU).
#   PROCPAINT_CUDA_ARCH     passed through as TORCH_CUDA_ARCH_LIST (default "8.0;9.0").
#   MAX_JOBS                parallel compile jobs (ninja), honoured by torch's BuildExtension.
SKIP_EXT = os.environ.get("PROCPAINT_SKIP_EXT", "0") == "1"
FORCE_CUDA = os.environ.get("PROCPAINT_FORCE_CUDA", "0") == "1"
CUDA_ARCH = os.environ.get("PROCPAINT_CUDA_ARCH", "8.0;9.0")


def _sources_hash() -> str:
    spec = importlib.util.spec_from_file_location("_pp_sources", ROOT / "procpaint" / "_sources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.sources_hash(CSRC)


def _extensions():
    if SKIP_EXT:
        print("procpaint: PROCPAINT_SKIP_EXT=1, building no native extension", file=sys.stderr)
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    with_cuda = FORCE_CUDA or (torch.version.cuda is not None and CUDA_HOME is not None)
    all_cpp = sorted(str(p.relative_to(ROOT)) for p in CSRC.rglob("*.cpp"))
    sources = [s for s in all_cpp if not s.endswith("_cuda.cpp")]
    defines = [
        f'-DPROCPAINT_TORCH_VERSION="{torch.__version__}"',
        f'-DPROCPAINT_SOURCES_HASH="{_sources_hash()}"',
    ]
    cxx = ["-O3", "-std=c++17", *defines]
    if sys.platform != "darwin":  # Apple clang has no -fopenmp; the kernels then run serially
        cxx += ["-fopenmp"]
    extra_link = ["-fopenmp"] if sys.platform != "darwin" else []
    kwargs = dict(
        name="procpaint._C",
        include_dirs=[str(CSRC)],
        extra_link_args=extra_link,
    )
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", CUDA_ARCH)
        sources += [s for s in all_cpp if s.endswith("_cuda.cpp")]
        sources += sorted(str(p.relative_to(ROOT)) for p in CSRC.rglob("*.cu"))
        cxx.append("-DPROCPAINT_WITH_CUDA")
        nvcc = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "-DPROCPAINT_WITH_CUDA", *defines]
        ext = CUDAExtension(sources=sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    else:
        ext = CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)
    print(f"procpaint: building procpaint._C ({'CPU+CUDA' if with_cuda else 'CPU'}, "
          f"{len(sources)} sources)", file=sys.stderr)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
