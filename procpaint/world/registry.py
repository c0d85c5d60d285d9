"""Pluggable components by class path: ``"package.module:Class"`` or ``"package.module.Class"``.

Configs name the painter, the judge and the tokenizer this way, so a user can point them at a real
image editor, a model-based judge or another tokenizer without touching the builders.
"""

from __future__ import annotations

import importlib

DEFAULTS = {
    "painter": "procpaint.world.render:Renderer",
    "judge": "procpaint.world.judge:SymbolicJudge",
    "detector": "procpaint.world.detect:Detector",
    "tokenizer": "procpaint.sequence.tokenizer:TextTokenizer",
}


def import_path(path: str):
    """Resolve ``"a.b:C"`` (or ``"a.b.C"``) to the object; errors name the path and what failed."""
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module or not attr:
        raise ValueError(f"class path {path!r} must look like 'package.module:Name'")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"cannot import module {module!r} of class path {path!r}: {e}") from e
    try:
        return getattr(mod, attr)
    except AttributeError:
        raise ImportError(f"module {module!r} has no attribute {attr!r} (class path {path!r})") from None


def build(path: str, **kwargs):
    """Instantiate the class at ``path`` (a role name from DEFAULTS picks the default)."""
    return import_path(DEFAULTS.get(path, path))(**kwargs)
