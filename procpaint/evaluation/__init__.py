"""Evaluation: the GenEval benchmark and the knowledge (WISE-analogue) benchmark of the painting
world, GenEval's folder layout, and paper-style tables. See ``train/evaluate.py``."""

from . import geneval, knowledge, layout, tables

__all__ = ["geneval", "knowledge", "layout", "tables"]
