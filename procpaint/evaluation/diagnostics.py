"""Process diagnostics: where painting in rounds helps or fails, read from the trajectories themselves.

A folder generated with ``keep_stages=True`` (``train/evaluate.py --diagnostics``) holds every stage
of every trajectory: texts in ``<00000>/trajectories.jsonl``, images under ``<00000>/stages/``
(:mod:`procpaint.evaluation.layout`). Each stage is checked by the world's exact judge
(:mod:`procpaint.world.judge`) and the benchmark's scorer (:func:`runner.score_image`), one detection
per image:

    plan consistent      the first plan's <des> scene does not contradict the prompt's scene graph
                         (``compare_plan`` against the metadata's ``spec``). A first plan is often
                         one step of several, so it may leave objects still to draw;
    plan complete        ... and leaves nothing to draw or place: it satisfies the prompt;
    final plan complete  the last plan's <des> satisfies the prompt (what the plans end up asking for);
    draft vs plan        the first draft shows exactly its plan's <des> scene (``compare_state`` on
                         the detected state: the verdict a critique should give);
    draft vs prompt      the first image passes the benchmark's rule for the prompt;
    critique             every (draft, critique) pair: what the critique says ("the image matches the
                         plan ..." fine, "the image does not match the plan ..." wrong, anything else
                         unreadable, :func:`~procpaint.world.critiques.parse_critique`) against
                         the judge's verdict of that draft vs its round's plan; a confusion matrix, and
                         accuracy where an unreadable critique is never right;
    refine success       of the drafts the judge finds wrong vs their plan, the share whose round has
                         a refined image the judge finds right vs that plan;
    after round r        the latest image after round r vs the prompt; a trajectory that stopped
                         earlier keeps its last image (none: wrong), so the last round is the
                         folder's benchmark score.

A round starts at each plan (stages before the first plan, single-pass's one image, are round 1).
Every rate comes with :func:`runner.summarize`'s numbers: per tag, overall by the benchmark's rule
(GenEval: mean over tags), bootstrap 95% intervals resampling prompts within tags. A plan that does
not parse counts as wrong for the plan rates and leaves its round out of the image-vs-plan ones
(``plans_unreadable`` counts them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..io import atomic_write, write_image
from ..world.critiques import parse_critique
from ..world.detect import Detector, state_of
from ..world.judge import compare_plan, compare_state
from ..world.language import parse_plan
from ..world.scene import Spec
from .geneval import spec_from_json
from .layout import iter_samples, prompt_dir, read_costs, read_image, read_jsonl
from .runner import benchmark_of, map_chunks, progress, score_image, summarize

IMAGE_KINDS = ("draft", "refined", "image")
SAYS = ("fine", "wrong", "unreadable")
METRICS = {"plan_consistent": "Plan consistent", "plan_complete": "Plan complete",
           "final_plan_complete": "Final plan complete", "draft_vs_plan": "Draft vs plan",
           "draft_vs_prompt": "Draft vs prompt", "critique": "Critique accuracy",
           "refine_success": "Refine success"}
FILES = ("diagnostics.json", "diagnostics.md", "accuracy_by_round.png")


def split_rounds(stages: list[dict]) -> list[list[tuple[int, dict]]]:
    """Stages -> rounds of (stage index, stage); a round starts at each plan."""
    rounds: list[list[tuple[int, dict]]] = []
    for j, s in enumerate(stages):
        if s["kind"] == "plan" or not rounds:
            rounds.append([])
        rounds[-1].append((j, s))
    return rounds


def plan_scene(text: str | None) -> Spec | None:
    """The <des> scene of a plan text, or None when it does not parse."""
    try:
        return parse_plan(text or "")[1]
    except ValueError:                          # grammar.ParseError
        return None


def critique_says(text: str | None) -> str:
    """'fine', 'wrong' or 'unreadable': the verdict an image critique states."""
    try:
        c = parse_critique(text or "")
    except ValueError:
        return "unreadable"
    return "unreadable" if c.subject != "image" else ("fine" if c.ok else "wrong")


class _Seen:
    """A detector that answers with detections already made (one detection per image)."""

    def __init__(self, detections):
        self.detections = detections

    def detect(self, image):
        return self.detections

    def state(self, image):
        return state_of(self.detections)


def verdicts(record: dict, meta: dict, folder: Path, bench: str, detector) -> dict | None:
    """One trajectory's verdicts (the module docstring); None when its stage images were not kept.

    ``record``: its trajectories.jsonl line; ``folder``: its prompt folder (stage paths are relative)."""
    stages = record.get("stages", [])
    if not all("image" in s for s in stages):
        return None
    spec = spec_from_json(meta["spec"])
    seen: dict[int, tuple] = {}                 # stage index -> (image, its detections)

    def look(j: int) -> tuple:
        if j not in seen:
            image = read_image(Path(folder) / stages[j]["image"])
            seen[j] = image, detector.detect(image)
        return seen[j]

    def vs_prompt(j: int | None) -> bool:
        if j is None:                           # nothing drawn yet: an empty canvas fails
            return False
        image, found = look(j)
        return bool(score_image(bench, image, meta, _Seen(found))[0])

    def vs_plan(j: int, plan: Spec) -> bool:
        return compare_state(plan, state_of(look(j)[1]))[0].ok

    def plan_rates(text: str) -> tuple[bool, bool]:
        plan = plan_scene(text)
        if plan is None:
            return False, False
        c, _ = compare_plan(plan, spec)
        return c.ok, c.ok and not c.objects and not c.relations

    plans = [s["text"] for s in stages if s["kind"] == "plan"]
    out = {"tag": meta["tag"], "prompt": meta["prompt"], "plans": len(plans),
           "plans_unreadable": sum(plan_scene(t) is None for t in plans),
           "plan_consistent": None, "plan_complete": None, "final_plan_complete": None,
           "draft_vs_plan": None, "draft_vs_prompt": None, "critiques": [], "refines": [], "rounds": []}
    if plans:
        out["plan_consistent"], out["plan_complete"] = plan_rates(plans[0])
        out["final_plan_complete"] = plan_rates(plans[-1])[1]
    latest, first = None, True
    for rd in split_rounds(stages):
        plan = plan_scene(rd[0][1]["text"]) if rd[0][1]["kind"] == "plan" else None
        draft = next((j for j, s in rd if s["kind"] in ("draft", "image") and s["image"]), None)
        after = [(j, s) for j, s in rd if draft is not None and j > draft]
        critique = next((s["text"] for _, s in after if s["kind"] == "critique"), None)
        refined = next((j for j, s in after if s["kind"] == "refined" and s["image"]), None)
        if draft is not None and first:
            first = False
            out["draft_vs_prompt"] = vs_prompt(draft)
            if rd[0][1]["kind"] == "plan":
                out["draft_vs_plan"] = None if plan is None else vs_plan(draft, plan)
        if draft is not None and plan is not None:
            ok = vs_plan(draft, plan)
            if critique is not None:
                out["critiques"].append([ok, critique_says(critique)])
            out["refines"].append([ok, None if refined is None else vs_plan(refined, plan)])
        latest = next((j for j, s in reversed(rd) if s["kind"] in IMAGE_KINDS and s["image"]), latest)
        out["rounds"].append(vs_prompt(latest))
    if first:                                   # drew nothing: the first image is an empty canvas
        out["draft_vs_prompt"] = False
        out["draft_vs_plan"] = False if plans and plan_scene(plans[0]) is not None else None
    return out


def diagnose(outdir: Path, metadata: list[dict] | None = None, *, detector: Detector | None = None,
             workers: int = 1, show_progress: bool = True) -> dict:
    """Diagnostics of every finished trajectory under ``outdir`` (metadata: its
    evaluation_metadata.jsonl by default). ``workers`` > 1 judges in forked processes (same result)."""
    outdir = Path(outdir)
    metadata = metadata if metadata is not None else read_jsonl(outdir / "evaluation_metadata.jsonl")
    bench, detector = benchmark_of(metadata), detector or Detector()
    todo = []
    for i, meta, png in iter_samples(outdir, metadata):
        rec = read_costs(outdir, i).get(int(png.stem))
        if rec is not None:
            todo.append((i, meta, rec))
    if not todo:
        raise FileNotFoundError(f"no trajectories under {outdir} "
                                f"(expected <outdir>/<00000>/trajectories.jsonl)")
    bar = progress(total=len(todo), desc=f"diagnosing {bench}", enable=show_progress)

    def judge(chunk: list) -> list:
        return [verdicts(rec, meta, prompt_dir(outdir, i), bench, detector) for i, meta, rec in chunk]

    found = map_chunks(judge, todo, workers, bar)
    rows = [v for v in found if v is not None]
    if len(rows) < len(found):
        print(f"warning: {len(found) - len(rows)} trajectory(ies) under {outdir} have no stage images "
              f"(generated without keep_stages); diagnosed the other {len(rows)}", file=sys.stderr)
    if not rows:
        raise FileNotFoundError(f"no trajectory under {outdir} kept its stage images (generate with "
                                f"--diagnostics or --keep-stages)")
    return aggregate(bench, rows, folder=str(outdir), without_stages=len(found) - len(rows))


def _rates(bench: str, obs: list[tuple[dict, bool]]) -> dict:
    """runner.summarize over observations (trajectory verdicts, bool); {} when there are none."""
    rows = [{"tag": v["tag"], "prompt": v["prompt"], "correct": bool(c)} for v, c in obs]
    return summarize(bench, rows) if rows else {}


def aggregate(bench: str, rows: list[dict], **extra) -> dict:
    """Rates (with intervals), critique confusion matrices, refine counts and accuracy by round from
    per-trajectory :func:`verdicts`."""
    obs = {m: [(v, v[m]) for v in rows if v[m] is not None]
           for m in ("plan_consistent", "plan_complete", "final_plan_complete", "draft_vs_plan",
                     "draft_vs_prompt")}
    obs["critique"] = [(v, says == ("fine" if ok else "wrong")) for v in rows for ok, says in v["critiques"]]
    obs["refine_success"] = [(v, fixed is True) for v in rows for ok, fixed in v["refines"] if not ok]
    n_rounds = max((len(v["rounds"]) for v in rows), default=0)
    by_round = [_rates(bench, [(v, bool(v["rounds"]) and v["rounds"][min(r, len(v["rounds"])) - 1])
                               for v in rows]) for r in range(1, n_rounds + 1)]
    present = {v["tag"] for v in rows}
    tags = [t for t in _columns(bench) if t in present] + sorted(present - set(_columns(bench)))
    confusion, refine, unreadable = {}, {}, {}
    for tag in [*tags, "overall"]:
        mine = [v for v in rows if tag in ("overall", v["tag"])]
        confusion[tag] = {f"is_{is_}": {f"says_{s}": sum(ok == (is_ == "fine") and says == s
                                                        for v in mine for ok, says in v["critiques"])
                                        for s in SAYS} for is_ in ("fine", "wrong")}
        pairs = [p for v in mine for p in v["refines"]]
        refine[tag] = {"wrong_drafts": sum(not ok for ok, _ in pairs),
                       "refined": sum(not ok and f is not None for ok, f in pairs),
                       "fixed": sum(not ok and f is True for ok, f in pairs),
                       "fine_drafts_refined": sum(ok and f is not None for ok, f in pairs),
                       "broken": sum(ok and f is False for ok, f in pairs)}
        unreadable[tag] = sum(v["plans_unreadable"] for v in mine)
    return {"benchmark": bench, **extra, "trajectories": len(rows),
            "metrics": {m: _rates(bench, o) for m, o in obs.items()}, "rounds": by_round,
            "critique_confusion": confusion, "refine_counts": refine, "plans_unreadable": unreadable}


# ---------------------------------------------------------------- reports

def _columns(bench: str) -> dict[str, str]:
    from .tables import GENEVAL_COLUMNS, KNOWLEDGE_COLUMNS

    return KNOWLEDGE_COLUMNS if bench == "knowledge" else GENEVAL_COLUMNS


def _rate_cells(scores: dict, cols) -> list[str]:
    from .tables import _ci, _fmt

    if not scores:
        return ["-"] * (len(cols) + 3)
    return [*(_fmt(scores.get(t)) for t in cols), _fmt(scores["overall"]), _ci(scores),
            str(sum(scores.get("images", {}).values()))]


def markdown(diag: dict) -> str:
    """diagnostics.md: rates per tag, accuracy by round, the critique confusion matrix, refine counts."""
    from .tables import _table

    cols = _columns(diag["benchmark"])
    head = [*cols.values(), "Overall", "Overall 95% CI", "n"]
    parts = [f"# Process diagnostics\n\n{diag['trajectories']} trajectories ({diag['benchmark']}) of "
             f"`{diag.get('folder', '')}`, judged by the world's exact judge; 95% bootstrap intervals over "
             f"prompts; n counts the observations (trajectories, or critiques / wrong drafts)."]
    if diag.get("without_stages"):
        parts.append(f"{diag['without_stages']} trajectories were generated without their stages and are "
                     f"left out.")
    parts.append("## Rates\n\n" + _table(["Metric", *head], [[METRICS[m], *_rate_cells(s, cols)]
                                                            for m, s in diag["metrics"].items()]))
    parts.append("## Accuracy after each round (latest image vs the prompt)\n\n" + _table(
        ["Round", *head], [[str(r), *_rate_cells(s, cols)] for r, s in enumerate(diag["rounds"], 1)])
        + "\n\n![accuracy by round](accuracy_by_round.png)")
    conf = diag["critique_confusion"]
    parts.append("## Critique vs judge (draft vs its plan)\n\n" + _table(
        ["Tag", *(f"is {i}, says {s}" for i in ("fine", "wrong") for s in SAYS)],
        [[t, *(str(c[f"is_{i}"][f"says_{s}"]) for i in ("fine", "wrong") for s in SAYS)]
         for t, c in conf.items()]))
    parts.append("## Refine (drafts the judge finds wrong vs their plan)\n\n" + _table(
        ["Tag", "Wrong drafts", "Refined", "Fixed", "Fine drafts refined", "Broken by the refine",
         "Plans unreadable"],
        [[t, *(str(c[k]) for k in ("wrong_drafts", "refined", "fixed", "fine_drafts_refined", "broken")),
          str(diag["plans_unreadable"][t])] for t, c in diag["refine_counts"].items()]))
    return "\n\n".join(parts) + "\n"


_LINE_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                (140, 86, 75), (227, 119, 194), (127, 127, 127))


def chart(diag: dict, width: int = 640, height: int = 400):
    """PIL image: accuracy after each round, one thin line per tag and overall (black) with its 95%
    interval as whiskers."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    im = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(im)
    left, right, top, bottom = 48, width - 150, 28, height - 40
    rounds = diag["rounds"]
    n = max(1, len(rounds))
    x = lambda r: left + (right - left) * ((r - 0.5) / n)                        # noqa: E731
    y = lambda v: bottom - (bottom - top) * v                                    # noqa: E731
    d.text((left, 8), f"accuracy after each round ({diag['benchmark']}, {diag['trajectories']} trajectories)",
           fill=(0, 0, 0), font=font)
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        d.line([(left, y(v)), (right, y(v))], fill=(220, 220, 220))
        d.text((8, y(v) - 6), f"{v:.2f}", fill=(0, 0, 0), font=font)
    for r in range(1, len(rounds) + 1):
        d.text((x(r) - 3, bottom + 6), str(r), fill=(0, 0, 0), font=font)
    d.text(((left + right) / 2 - 16, bottom + 22), "round", fill=(0, 0, 0), font=font)
    d.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    cols = _columns(diag["benchmark"])
    series = [(name, [s.get(t) for s in rounds], _LINE_COLORS[k % len(_LINE_COLORS)], 2)
              for k, (t, name) in enumerate(cols.items())]
    series.append(("Overall", [s.get("overall") for s in rounds], (0, 0, 0), 4))
    for k, (name, vals, color, w) in enumerate(series):
        pts = [(x(r), y(v)) for r, v in enumerate(vals, 1) if v is not None]
        if not pts:
            continue
        if len(pts) > 1:
            d.line(pts, fill=color, width=w)
        for px, py in pts:
            d.ellipse([px - w - 1, py - w - 1, px + w + 1, py + w + 1], fill=color)
        ly = top + 14 * k
        d.line([(right + 10, ly + 6), (right + 28, ly + 6)], fill=color, width=w)
        d.text((right + 34, ly), name, fill=(0, 0, 0), font=font)
    for r, s in enumerate(rounds, 1):
        lo_hi = s.get("ci95", {}).get("overall")
        if lo_hi:
            d.line([(x(r), y(lo_hi[0])), (x(r), y(lo_hi[1]))], fill=(0, 0, 0))
            for v in lo_hi:
                d.line([(x(r) - 4, y(v)), (x(r) + 4, y(v))], fill=(0, 0, 0))
    return im


def write(outdir: Path, diag: dict) -> list[Path]:
    """diagnostics.json, diagnostics.md and accuracy_by_round.png in ``outdir``; returns their paths."""
    outdir = Path(outdir)
    j, m, png = (outdir / f for f in FILES)
    atomic_write(j, json.dumps(diag, indent=2) + "\n")
    atomic_write(m, markdown(diag))
    write_image(png, chart(diag))
    return [j, m, png]


def headline(diag: dict) -> dict:
    """The overall numbers of a diagnostics.json (for summary tables)."""
    return {**{m: s.get("overall") for m, s in diag["metrics"].items()},
            "rounds": [s.get("overall") for s in diag["rounds"]], "trajectories": diag["trajectories"]}


def section(rows: list[dict]) -> str:
    """The summary.md section: one line per table row that carries ``diagnostics`` (tables.row)."""
    from .tables import _fmt, _table

    rows = [r for r in rows if r.get("diagnostics")]
    return ("## Process diagnostics (overall; per tag and intervals: diagnostics.md in each folder)\n\n"
            + _table(["Model", "Mode", "Benchmark", *METRICS.values(), "Accuracy by round"],
                     [[r["run"], r["mode"], r["benchmark"], *(_fmt(r["diagnostics"].get(m)) for m in METRICS),
                       " -> ".join(_fmt(v) for v in r["diagnostics"]["rounds"])] for r in rows]))
