"""The procedural painting world: scene graphs, text grammar, renderer, detector, symbolic judge."""

from .critiques import Critique, Error, critique_text, parse_critique
from .detect import Detection, Detector
from .edit import EditError, apply_op, apply_ops
from .judge import SymbolicJudge, compare_plan, compare_state
from .language import (
                      Add,
                      Op,
                      ParseError,
                      Remove,
                      Replace,
                      SetAttr,
                      Swap,
                      ops_text,
                      parse_ops,
                      parse_plan,
                      parse_prompt,
                      parse_refine,
                      plan_text,
                      prompt_text,
                      refine_text,
                      vocabulary,
)
from .prompts import TAGS, heldout_prompts, is_heldout, sample_prompt
from .registry import build, import_path
from .render import Renderer
from .scene import COLORS, SHAPES, SIZES, Obj, Placed, Spec, State, consistent, realize, satisfies

__all__ = [
    "Add", "COLORS", "Critique", "Detection", "Detector", "EditError", "Error", "Obj", "Op", "ParseError",
    "Placed", "Remove", "Renderer", "Replace", "SHAPES", "SIZES", "SetAttr", "Spec", "State", "Swap",
    "SymbolicJudge", "TAGS", "apply_op", "apply_ops", "build", "compare_plan", "compare_state", "consistent",
    "critique_text", "heldout_prompts", "import_path", "is_heldout", "ops_text", "parse_critique",
    "parse_ops",
    "parse_plan", "parse_prompt", "parse_refine", "plan_text", "prompt_text", "realize", "refine_text",
    "sample_prompt", "satisfies", "vocabulary",
]
