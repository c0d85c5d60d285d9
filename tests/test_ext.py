"""The extension loader: one warning and a fallback, never an ImportError."""

import os
import subprocess
import sys
import types
from pathlib import Path

import torch

from procpaint import _ext

ROOT = Path(__file__).resolve().parent.parent


def test_staleness_detects_other_torch(tmp_path):
    fake = types.SimpleNamespace(torch_version="0.0.1", sources_hash="x")
    assert "torch 0.0.1" in _ext.staleness(fake, tmp_path)


def test_staleness_detects_changed_sources(tmp_path):
    (tmp_path / "a.cpp").write_text("int x;")
    fake = types.SimpleNamespace(torch_version=torch.__version__, sources_hash="not-the-hash")
    assert "older sources" in _ext.staleness(fake, tmp_path)
    from procpaint._sources import sources_hash

    fake.sources_hash = sources_hash(tmp_path)
    assert _ext.staleness(fake, tmp_path) is None


def test_built_extension_is_current(native):
    assert _ext.staleness(native, ROOT / "csrc") is None
    assert hasattr(torch.ops.procpaint, "attention_mask")


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=ROOT, timeout=120)


def test_disabled_extension_falls_back_silently():
    proc = _run("import procpaint; from procpaint import _ext; print(_ext.available())",
                PROCPAINT_DISABLE_EXT="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    assert "ExtensionWarning" not in proc.stderr


def test_broken_extension_warns_once_and_falls_back(tmp_path):
    # A package directory whose _C is unimportable: the loader must warn (once) and carry on.
    pkg = tmp_path / "procpaint"
    pkg.mkdir()
    for f in (ROOT / "procpaint").glob("*.py"):
        (pkg / f.name).write_text(f.read_text())
    (pkg / "_C.py").write_text("raise ImportError('simulated: undefined symbol _ZN3c10')\n")
    code = ("import procpaint, warnings; from procpaint import _ext; _ext.load(); _ext.load(); "
            "print(_ext.available(), _ext.has_kernel('attention_mask', 'cpu'))")
    proc = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)}, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False False"
    assert proc.stderr.count("ExtensionWarning") == 1
    assert "simulated: undefined symbol" in proc.stderr and "Rebuild with" in proc.stderr
