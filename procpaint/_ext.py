"""The one module that touches the native extension ``procpaint._C``.

Everything else asks :func:`has_kernel` whether ``torch.ops.procpaint.<op>`` has a kernel for a
device and otherwise runs the op's pure-PyTorch reference. A missing, broken or stale extension
is a single warning (what failed, the versions involved, how to rebuild), never an ImportError.

Stale means: built against another torch, or (in a source checkout) from ``csrc/`` sources that
have changed since. Ops of a stale build are not used even if the library loaded.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path

import torch

from procpaint._sources import sources_hash

REBUILD = 'pip install --no-build-isolation -e ".[dev]"   (or: python setup.py build_ext --inplace)'
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta"}


class ExtensionWarning(UserWarning):
    """The native extension is unavailable; ops run their PyTorch references."""


@functools.cache
def _load() -> tuple[object | None, str | None]:
    """Import procpaint._C once; return (module, None) or (None, reason)."""
    if os.environ.get("PROCPAINT_DISABLE_EXT", "0") == "1":
        return None, "disabled by PROCPAINT_DISABLE_EXT=1"
    try:
        from procpaint import _C  # noqa: PLC0415  (the only import of the extension)
    except ImportError as exc:
        return None, f"import failed: {exc}"
    reason = staleness(_C, Path(__file__).resolve().parent.parent / "csrc")
    return (None, reason) if reason else (_C, None)


def staleness(module, csrc: Path) -> str | None:
    """Why a loaded extension module must not be used, or None if it is current."""
    built_for = getattr(module, "torch_version", "unknown")
    if built_for != torch.__version__:
        return f"built for torch {built_for}, running torch {torch.__version__}"
    if csrc.is_dir() and getattr(module, "sources_hash", None) != sources_hash(csrc):
        return f"built from older sources than {csrc} (sources changed since the build)"
    return None


def _warn(reason: str) -> None:
    msg = (
        f"procpaint native extension unavailable ({reason}); every op falls back to its PyTorch "
        f"reference (correct, slower). torch {torch.__version__}, Python "
        f"{sys.version.split()[0]}. Rebuild with: {REBUILD}"
    )
    warnings.warn(msg, ExtensionWarning, stacklevel=3)


@functools.cache
def load():
    """The extension module, or None (with one warning for the whole process)."""
    module, reason = _load()
    if module is None and not reason.startswith("disabled"):  # asked for: no warning
        _warn(reason)
    return module


def available() -> bool:
    return load() is not None


def unavailable_reason() -> str | None:
    return _load()[1]


def with_cuda() -> bool:
    module = load()
    return bool(module is not None and getattr(module, "with_cuda", 0))


@functools.cache
def _has_kernel(op: str, key: str) -> bool:
    if load() is None:
        return False
    name = f"procpaint::{op}"
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(name, key)
    except RuntimeError:  # schema not registered by this build
        return False


def has_kernel(op: str, device: torch.device | str) -> bool:
    """Whether ``torch.ops.procpaint.<op>`` has a native kernel for ``device``'s type."""
    key = _DISPATCH_KEYS.get(torch.device(device).type)
    return key is not None and _has_kernel(op, key)


def require() -> None:
    """Raise if the extension is unavailable (tests and benchmarks call this when
    PROCPAINT_REQUIRE_EXT=1 so a silent fallback cannot pass as a kernel test)."""
    if load() is None:
        raise RuntimeError(f"procpaint._C is required but unavailable: {unavailable_reason()}. "
                           f"Rebuild with: {REBUILD}")
