"""procpaint: process-driven image generation (Plan -> Sketch -> Inspect -> Refine).

Importing the package loads the native ops (``torch.ops.procpaint.*``) when they are built; a
missing build warns once and every op runs its PyTorch reference (see procpaint/_ext.py).
"""

from procpaint import _ext

__version__ = "0.1.0"

_ext.load()
