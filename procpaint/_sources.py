"""Fingerprint of the native sources under ``csrc/``.

setup.py compiles this hash into ``procpaint._C``; the loader recomputes it in a source checkout
and treats a mismatch as a stale build. Kept free of torch and package imports so setup.py can
load it by path before anything is built.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SOURCE_SUFFIXES = (".cpp", ".cu", ".h", ".cuh")


def native_sources(csrc: Path) -> list[Path]:
    """All native source files under ``csrc``, sorted so the hash is order independent."""
    return sorted(p for p in csrc.rglob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file())


def sources_hash(csrc: Path) -> str:
    digest = hashlib.sha256()
    for path in native_sources(csrc):
        digest.update(path.relative_to(csrc).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]
