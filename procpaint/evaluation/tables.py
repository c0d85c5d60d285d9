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
import re
from pathlib import Path

from ..io import atomic_write
from .geneval import GENEVAL_TAGS
from .knowledge import CATEGORIES
from .layout import read_jsonl

GENEVAL_COLUMNS = dict(zip(GENEVAL_TAGS, ("Single", "Two", "Counting", "Colors", "Position", "Color Attr.")))
KNOWLEDGE_COLUMNS = {c: c.capitalize() for c in CATEGORIES}
# Knowledge folders and the facts they ask about (train/evaluate.py --knowledge-split), scored alike.
KNOWLEDGE_FACTS = {"knowledge": "held-out", "knowledge-trained": "trained"}


def rule(benchmark: str) -> str:
    """The scoring rule of a benchmark folder (runner.summarize's name): knowledge-* -> knowledge."""
    return "knowledge" if benchmark in KNOWLEDGE_FACTS else benchmark


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
    out = {"run": run, "mode": mode, "benchmark": benchmark, "scores": summarize(rule(benchmark), results),
           "cost": cost_summary(folder, n) if n else {}, "folder": str(folder)}
    train = folder.parent.parent / "train_summary.json"        # <out>/<run>/train_summary.json
    if train.is_file():
        out["train"] = json.loads(train.read_text())
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
        if bench in ("geneval", *KNOWLEDGE_FACTS):
            rows.append(row(res.parent.parent.parent.name, res.parent.parent.name, bench, res.parent))
    return rows


SEED_SUFFIX = re.compile(r"^(?P<family>.+?)_s(?P<seed>\d+)$")


def family(run: str) -> tuple[str, int]:
    """(row, seed) of a run name: ``process_s1`` -> ("process", 1); a name without a suffix is seed 0."""
    m = SEED_SUFFIX.match(run)
    return (m["family"], int(m["seed"])) if m else (run, 0)


def comparisons(rows: list[dict], baseline: str = "single_pass") -> list[dict]:
    """Every scored row against the baseline row of the same seed (or seed 0 when that seed has no
    baseline), on the same benchmark: :func:`runner.paired_difference` over the shared prompts."""
    from .runner import paired_difference

    base = {(family(r["run"])[1], r["benchmark"]): r for r in rows if family(r["run"])[0] == baseline}
    out = []
    for r in rows:
        fam, seed = family(r["run"])
        b = base.get((seed, r["benchmark"])) or base.get((0, r["benchmark"]))
        if fam == baseline or b is None:
            continue
        d = paired_difference(rule(r["benchmark"]), load_results(Path(b["folder"]) / "results.jsonl"),
                              load_results(Path(r["folder"]) / "results.jsonl"))
        out.append({"run": r["run"], "mode": r["mode"], "benchmark": r["benchmark"], "baseline": b["run"],
                    "baseline_mode": b["mode"], **d})
    return out


def _diff(c: dict, tag: str) -> str:
    if tag not in c["diff"]:
        return "-"
    lo, hi = c["ci95"][tag]
    return f"{c['diff'][tag]:+.2f} ({lo:+.2f} .. {hi:+.2f}){' ~' if lo <= 0 <= hi else ''}"


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


def collect_train(out: Path) -> dict[str, dict]:
    """``<out>/<run>/train_summary.json`` of every run, scored or not (the shared base is not)."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(out).glob("*/train_summary.json"))}


def markdown(rows: list[dict], train: dict[str, dict] | None = None) -> str:
    """The combined tables; ``train``: run -> train_summary.json beyond those the rows carry."""
    parts = []
    gen = [r for r in rows if r["benchmark"] == "geneval"]
    if gen:
        parts.append("## GenEval (procedural world)\n\n" + _table(
            ["Model", "Mode", *GENEVAL_COLUMNS.values(), "Overall", "Overall 95% CI", "Images"],
            [[r["run"], r["mode"], *(_fmt(r["scores"].get(t)) for t in GENEVAL_COLUMNS),
              _fmt(r["scores"]["overall"]), _ci(r["scores"]), str(sum(r["scores"].get("images", {}).values()))]
             for r in gen]))
    kn = [r for r in rows if r["benchmark"] in KNOWLEDGE_FACTS]
    if kn:
        parts.append("## Knowledge (WISE analogue; overall weighted by prompt share; Facts: held-out = in "
                     "the fact corpus only, trained = also in training image prompts)\n\n" + _table(
            ["Model", "Mode", "Facts", *KNOWLEDGE_COLUMNS.values(), "Overall", "Overall 95% CI", "Images"],
            [[r["run"], r["mode"], KNOWLEDGE_FACTS[r["benchmark"]],
              *(_fmt(r["scores"].get(c)) for c in KNOWLEDGE_COLUMNS),
              _fmt(r["scores"]["overall"]), _ci(r["scores"]), str(sum(r["scores"].get("images", {}).values()))]
             for r in kn]))
    cost = [r for r in rows if r["cost"]]
    if cost:
        parts.append("## Inference cost per prompt (mean over generated images)\n\n" + _table(
            ["Model", "Mode", "Benchmark", "Forward passes", "Seconds", "Images / trajectory", "No image"],
            [[r["run"], r["mode"], r["benchmark"], f"{r['cost']['forward_passes']:.1f}",
              f"{r['cost']['seconds']:.3f}", f"{r['cost']['images']:.2f}", str(r["cost"]["no_image"])]
             for r in cost]))
    train = {**{r["run"]: r["train"] for r in rows if r.get("train")}, **(train or {})}
    if train:
        parts.append("## Training compute per run (equal-compute check; train_summary.json)\n\n" + _table(
            ["Model", "Started from", "Seed", "Steps", "Tokens / step (real)", "Generated images / step",
             "CE tokens / step", "MSE tokens / step", "Training s"],
            [[run, Path(t["finetune_from"]).stem if t.get("finetune_from") else "scratch", str(t["seed"]),
              str(t["steps"]), f"{t['packed_tokens_per_step']:.0f} ({t['real_tokens_per_step']:.0f})",
              f"{t['generated_images_per_step']:.1f}", f"{t['ce_tokens_per_step']:.0f}",
              f"{t['mse_tokens_per_step']:.0f}", f"{t['seconds']:.0f}"] for run, t in sorted(train.items())]))
    fams: dict[tuple, dict[int, float]] = {}
    for r in rows:
        fam, seed = family(r["run"])
        fams.setdefault((fam, r["mode"], r["benchmark"]), {})[seed] = r["scores"]["overall"]
    multi = {k: v for k, v in fams.items() if len(v) > 1}
    if multi:
        parts.append("## Seeds (overall per training seed)\n\n" + _table(
            ["Model", "Mode", "Benchmark", "Per seed", "Mean", "Spread (max - min)"],
            [[f, m, b, ", ".join(f"s{k}: {v[k]:.2f}" for k in sorted(v)), f"{sum(v.values()) / len(v):.2f}",
              f"{max(v.values()) - min(v.values()):.2f}"] for (f, m, b), v in sorted(multi.items())]))
    comp = comparisons(rows)
    if comp:
        parts.append("## Against the single-pass baseline (paired bootstrap over the same prompts; "
                     "difference (95% interval); ~ marks an interval that holds 0: inside the noise)\n\n" + _table(
                         ["Model", "Mode", "Benchmark", "vs", "Overall", "Position", "Distinct prompts"],
                         [[c["run"], c["mode"], c["benchmark"], f"{c['baseline']} ({c['baseline_mode']})",
                           _diff(c, "overall"), _diff(c, "position"), str(c["prompts"])] for c in comp]))
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
    atomic_write(m, header + markdown(rows, collect_train(out)))
    return j, m
