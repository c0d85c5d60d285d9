"""Paper-style tables: ``summary.json`` and ``summary.md`` from scored benchmark folders.

An evaluation directory holds one folder per (run, mode, benchmark), each scored by
:func:`procpaint.evaluation.runner.score_dir`:

    <out>/<run>/<mode>/<geneval|knowledge>/results.jsonl      (+ images, trajectories.jsonl)

:func:`collect` finds them all, :func:`write_summary` writes the combined tables: GenEval per tag
(the paper's Table 1 columns), knowledge per category (WISE's columns), and inference cost per
prompt (forward passes, wall seconds, images per trajectory), and the process diagnostics of folders that
have a ``diagnostics.json`` (:mod:`procpaint.evaluation.diagnostics`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..io import atomic_write
from .geneval import GENEVAL_TAGS
from .knowledge import CATEGORIES
from .layout import read_jsonl

GENEVAL_COLUMNS = dict(zip(GENEVAL_TAGS, ("Single", "Two", "Counting", "Colors", "Position", "Color Attr.")))
KNOWLEDGE_COLUMNS = {c: c.capitalize() for c in CATEGORIES}


def load_results(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def row(run: str, mode: str, benchmark: str, folder: Path) -> dict:
    """One table row from a scored folder: scores (runner.summarize) and cost per trajectory."""
    from .runner import cost_summary, summarize

    folder = Path(folder)
    results = load_results(folder / "results.jsonl")
    meta = folder / "evaluation_metadata.jsonl"
    n = len(read_jsonl(meta)) if meta.is_file() else 0
    out = {"run": run, "mode": mode, "benchmark": benchmark, "scores": summarize(benchmark, results),
           "cost": cost_summary(folder, n) if n else {}, "folder": str(folder)}
    diag = folder / "diagnostics.json"
    if diag.is_file():
        from .diagnostics import headline

        out["diagnostics"] = headline(json.loads(diag.read_text()))
    return out


def collect(out: Path) -> list[dict]:
    """Rows for every ``<run>/<mode>/<benchmark>/results.jsonl`` under ``out`` (sorted)."""
    out = Path(out)
    rows = []
    for res in sorted(out.glob("*/*/*/results.jsonl")):
        bench = res.parent.name
        if bench in ("geneval", "knowledge"):
            rows.append(row(res.parent.parent.parent.name, res.parent.parent.name, bench, res.parent))
    return rows


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.2f}" if isinstance(x, float) else str(x)


def _ci(scores: dict) -> str:
    lo_hi = scores.get("ci95", {}).get("overall")
    return "-" if not lo_hi else f"{lo_hi[0]:.2f} - {lo_hi[1]:.2f}"


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out)


def markdown(rows: list[dict]) -> str:
    parts = []
    gen = [r for r in rows if r["benchmark"] == "geneval"]
    if gen:
        parts.append("## GenEval (procedural world)\n\n" + _table(
            ["Model", "Mode", *GENEVAL_COLUMNS.values(), "Overall", "Overall 95% CI", "Images"],
            [[r["run"], r["mode"], *(_fmt(r["scores"].get(t)) for t in GENEVAL_COLUMNS),
              _fmt(r["scores"]["overall"]), _ci(r["scores"]), str(sum(r["scores"].get("images", {}).values()))]
             for r in gen]))
    kn = [r for r in rows if r["benchmark"] == "knowledge"]
    if kn:
        parts.append("## Knowledge (WISE analogue; overall weighted by prompt share)\n\n" + _table(
            ["Model", "Mode", *KNOWLEDGE_COLUMNS.values(), "Overall", "Overall 95% CI", "Images"],
            [[r["run"], r["mode"], *(_fmt(r["scores"].get(c)) for c in KNOWLEDGE_COLUMNS),
              _fmt(r["scores"]["overall"]), _ci(r["scores"]), str(sum(r["scores"].get("images", {}).values()))]
             for r in kn]))
    cost = [r for r in rows if r["cost"]]
    if cost:
        parts.append("## Inference cost per prompt (mean over generated images)\n\n" + _table(
            ["Model", "Mode", "Benchmark", "Forward passes", "Seconds", "Images / trajectory", "No image"],
            [[r["run"], r["mode"], r["benchmark"], f"{r['cost']['forward_passes']:.1f}",
              f"{r['cost']['seconds']:.3f}", f"{r['cost']['images']:.2f}", str(r["cost"]["no_image"])]
             for r in cost]))
    from .diagnostics import section

    parts += [section(rows)] if any(r.get("diagnostics") for r in rows) else []
    return "\n\n".join(parts) + "\n"


def write_summary(out: Path, rows: list[dict], extra: dict | None = None) -> tuple[Path, Path]:
    """Write ``<out>/summary.json`` and ``<out>/summary.md``; returns both paths."""
    out = Path(out)
    data = {"rows": rows, **(extra or {})}
    j, m = out / "summary.json", out / "summary.md"
    atomic_write(j, json.dumps(data, indent=2) + "\n")
    header = "# procpaint evaluation\n\n"
    if extra:
        header += "".join(f"- {k}: `{v}`\n" for k, v in extra.items()) + "\n"
    atomic_write(m, header + markdown(rows))
    return j, m
