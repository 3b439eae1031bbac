"""The run report: SFT vs RL accuracy per hardness, what RL changed, training curves, RM accuracy, time per step.

Built only from published artifacts (manifests and the files they list), so it can be rewritten at
any time, locally or from a cluster run's S3 store, and says "not run" for steps without a manifest.
Which steps hold the SFT and the RL scores comes from the run graph: the evaluate step whose predict
step reads the ``sft`` model, and the last evaluate step whose predict step reads another model.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .config import RunConfig
from .graph import STEPS, Step, steps_for
from .store import ArtifactStore, open_store
from .store.manifest import Manifest, fetch, publish, read_manifest

__all__ = ["RunSteps", "collect_run", "compare_predictions", "render_report", "run_steps", "write_run_report"]

HARDNESS = ("easy", "medium", "hard", "extra", "all")
#: per step kind: the JSONL training log the report plots (else the first ``*_log.jsonl`` a step published)
CURVE_FILES = {"sft": ("loss_log.jsonl",), "rm": ("rm_log.jsonl",), "ppo": ("ppo_log.jsonl",),
               "grpo": ("grpo_log.jsonl",), "dpo": ("dpo_log.jsonl",)}
#: examples of each kind of change the "what RL changed" section shows
EXAMPLES_PER_KIND = 3


@dataclass(frozen=True)
class RunSteps:
    """The steps the report reads, found in the run graph (never by hard-coded name)."""

    sft: str | None
    rm: str | None
    #: the final RL step (and its kind: the algorithm), its predict step and its evaluate step
    rl: str | None
    rl_kind: str | None
    predict_sft: str | None
    predict_rl: str | None
    evaluate_sft: str | None
    evaluate_rl: str | None
    prepare: str | None


def run_steps(steps: tuple[Step, ...] = STEPS) -> RunSteps:
    by_name = {s.name: s for s in steps}
    found: dict[str, str | None] = dict.fromkeys(RunSteps.__dataclass_fields__)  # type: ignore[arg-type]
    for s in steps:
        if s.kind in ("sft", "rm", "prepare") and found[s.kind] is None:
            found[s.kind] = s.name
        if s.kind != "evaluate":
            continue
        predict = next((by_name[i] for i in s.inputs if i in by_name and by_name[i].kind == "predict"), None)
        if predict is None or predict.model_from not in by_name:
            continue
        if by_name[predict.model_from].kind == "sft":
            found["predict_sft"], found["evaluate_sft"] = predict.name, s.name
        else:
            found["rl"], found["predict_rl"], found["evaluate_rl"] = predict.model_from, predict.name, s.name
            found["rl_kind"] = by_name[predict.model_from].kind
    return RunSteps(**found)


def collect_run(store: ArtifactStore, run_id: str, steps: tuple[Step, ...] = STEPS) -> dict[str, Manifest | None]:
    return {s.name: read_manifest(store, f"runs/{run_id}/{s.name}") for s in steps}


def _fetch_one(store: ArtifactStore, run_id: str, step: str, manifest: Manifest | None, name: str,
               tmp: Path) -> str | None:
    """The text of one published file of ``step``, or None when the step did not publish it."""
    if manifest is None or name not in {f.path for f in manifest.files}:
        return None
    local = tmp / step
    one = manifest.model_copy(update={"files": [f for f in manifest.files if f.path == name]})
    fetch(store, f"runs/{run_id}/{step}", local, manifest=one)
    return (local / name).read_text(encoding="utf-8")


def _read_log(store: ArtifactStore, run_id: str, step: Step, manifest: Manifest, tmp: Path) -> list[dict[str, Any]]:
    names = [f.path for f in manifest.files]
    candidates = [*CURVE_FILES.get(step.kind, ()), *sorted(n for n in names if n.endswith("_log.jsonl"))]
    for candidate in candidates:
        text = _fetch_one(store, run_id, step.name, manifest, candidate, tmp)
        if text is not None:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
    return []


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("–" if v is None else str(v))


def _tsv(text: str | None) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text), delimiter="\t")) if text else []


def _jsonl(text: str | None) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (text or "").splitlines() if line.strip()]


def compare_predictions(sft_scores: list[dict[str, str]], rl_scores: list[dict[str, str]],
                        sft_preds: list[dict[str, Any]], rl_preds: list[dict[str, Any]],
                        questions: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Dev examples by what RL did to their SQL: ``fixed`` (wrong -> right by EX), ``broken`` (right -> wrong),
    ``changed_still_wrong`` (another wrong SQL), ``changed_still_right`` (other right SQL); unchanged SQL is
    left out. Rows align by position (the evaluate step's lines, the predict step's ``index``)."""
    out: dict[str, list[dict[str, Any]]] = {"fixed": [], "broken": [], "changed_still_wrong": [],
                                            "changed_still_right": []}
    n = min(len(sft_scores), len(rl_scores), len(sft_preds), len(rl_preds))
    before_sql = {int(p.get("index", i)): p.get("prediction", "") for i, p in enumerate(sft_preds)}
    after_sql = {int(p.get("index", i)): p.get("prediction", "") for i, p in enumerate(rl_preds)}
    for i in range(n):
        before, after = sft_scores[i].get("ex") == "1", rl_scores[i].get("ex") == "1"
        sql_before, sql_after = before_sql.get(i, ""), after_sql.get(i, "")
        if sql_before == sql_after:
            continue
        kind = ("fixed" if after and not before else "broken" if before and not after
                else "changed_still_right" if after else "changed_still_wrong")
        q = questions[i] if i < len(questions) else {}
        out[kind].append({"index": i, "db_id": q.get("db_id", sft_scores[i].get("db_id", "")),
                          "question": q.get("question", ""), "gold": q.get("query", ""),
                          "sft": sql_before, "rl": sql_after})
    return out


def _changes_section(changes: dict[str, list[dict[str, Any]]] | None, n: int, rl_name: str) -> list[str]:
    lines = ["", f"## What RL changed ({rl_name})", ""]
    if changes is None:
        return [*lines, "Not known: both predict and evaluate steps must be published."]
    counts = {k: len(v) for k, v in changes.items()}
    lines += [(f"RL changed the SQL of {sum(counts.values())} of {n} dev questions (execution accuracy before "
              f"-> after): net {counts['fixed'] - counts['broken']:+d} questions."), "",
              "| change | questions |", "| --- | ---: |",
              f"| fixed (wrong -> right) | {counts['fixed']} |", f"| broken (right -> wrong) | {counts['broken']} |",
              f"| changed, still wrong | {counts['changed_still_wrong']} |",
              f"| changed, still right | {counts['changed_still_right']} |"]
    titles = {"fixed": "Fixed", "broken": "Broken", "changed_still_wrong": "Changed, still wrong"}
    for kind, rows in changes.items():
        if not rows or kind not in titles:
            continue
        lines += ["", f"### {titles[kind]} (first {min(len(rows), EXAMPLES_PER_KIND)} of {len(rows)})", ""]
        for r in rows[:EXAMPLES_PER_KIND]:
            lines += [f"- dev #{r['index']} ({r['db_id']}): {r['question']}",
                      f"  - gold: `{r['gold']}`", f"  - SFT: `{r['sft']}`", f"  - RL: `{r['rl']}`"]
    return lines


def render_report(run_id: str, manifests: dict[str, Manifest | None], curves: dict[str, list[dict[str, Any]]],
                  plot_name: str | None, *, counts: dict[str, int] | None = None,
                  changes: dict[str, list[dict[str, Any]]] | None = None, steps: RunSteps | None = None,
                  graph: tuple[Step, ...] = STEPS, wikisql: bool = False) -> str:
    """The report's Markdown. ``counts``: questions per hardness level (levels without any get no row).
    ``wikisql``: the evaluation was WikiSQL's (no hardness levels, EM = logical form): one row, said so."""
    steps = steps or run_steps(graph)
    sft = manifests.get(steps.evaluate_sft) if steps.evaluate_sft else None
    rl = manifests.get(steps.evaluate_rl) if steps.evaluate_rl else None
    rl_label = f"RL ({steps.rl_kind})" if steps.rl_kind else "RL"
    levels = _levels(counts, wikisql)
    lines = [f"# Run `{run_id}`", "", f"Written {datetime.now(UTC).isoformat(timespec='seconds')}.", ""]
    if wikisql:
        lines += ["## Execution accuracy (EX) and logical-form accuracy (EM), scored as WikiSQL scores", "",
                  "WikiSQL has no hardness levels: one row for the whole dev split.", "",
                  f"| questions | SFT EX | {rl_label} EX | SFT EM | {rl_label} EM |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
    else:
        lines += ["## Execution accuracy (EX) and exact match (EM) per hardness", "",
                  f"| hardness | questions | SFT EX | {rl_label} EX | SFT EM | {rl_label} EM |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for h in levels:
        key = "" if h == "all" else f"_{h}"
        row = ([] if wikisql else [h]) + [_fmt(counts.get(h)) if counts else "–"]
        for metric in ("ex", "em"):
            for m in (sft, rl):
                row.append(_fmt(m.metrics.get(f"{metric}{key}") if m else None))
        lines.append("| " + " | ".join(row) + " |")
    if counts and not wikisql:
        empty = [h for h in HARDNESS if h not in levels]
        if empty:
            lines += ["", f"The dev set has no {' / '.join(empty)} questions."]
    if sft and rl and isinstance(sft.metrics.get("ex"), float) and isinstance(rl.metrics.get("ex"), float):
        n = int(sft.metrics.get("n", 0)) or None
        ex_delta = rl.metrics["ex"] - sft.metrics["ex"]
        questions = f" ({round(ex_delta * n):+d} of {n} questions)" if n else ""
        lines += ["", (f"RL changes EX by {100 * ex_delta:+.1f} points{questions} and EM by "
                       f"{100 * (rl.metrics.get('em', 0.0) - sft.metrics.get('em', 0.0)):+.1f} points.")]
    if steps.evaluate_rl:
        lines += _changes_section(changes, int(sft.metrics.get("n", 0)) if sft else 0,
                                  f"{steps.rl}, {steps.rl_kind}" if steps.rl else "RL")
    rm = manifests.get(steps.rm) if steps.rm else None
    lines += ["", "## Reward model", ""]
    if rm:
        acc = rm.metrics.get("eval_accuracy", rm.metrics.get("accuracy"))
        lines.append(f"Pairwise accuracy on held-out pairs: {_fmt(acc)}.")
        by_origin = {k.removeprefix("eval_accuracy_"): v for k, v in rm.metrics.items()
                     if k.startswith("eval_accuracy_") and isinstance(v, int | float)}
        if by_origin:  # the policy's own mistakes vs verified perturbations of gold
            lines.append("By origin of the rejected answer: "
                         + ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(by_origin.items())) + ".")
    else:
        lines.append("Not run.")
    lines += ["", "## Steps", "", "| step | kind | state | seconds |", "| --- | --- | --- | ---: |"]
    for s in graph:
        m = manifests.get(s.name)
        if m is None:
            lines.append(f"| {s.name} | {s.kind} | not published | – |")
            continue
        secs = m.metrics.get("seconds", (m.finished_at - m.started_at).total_seconds())
        lines.append(f"| {s.name} | {s.kind} | published | {_fmt(float(secs))} |")
    lines += ["", "### Metrics of each step", ""]
    for s in graph:
        m = manifests.get(s.name)
        shown = {k: v for k, v in (m.metrics.items() if m else ()) if k != "seconds" and isinstance(v, int | float)}
        if not shown:
            continue
        lines += [f"**{s.name}**", "", "| metric | value |", "| --- | ---: |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in shown.items()]
        lines.append("")
    if plot_name:
        lines += ["## Curves", "", f"![training curves and accuracy]({plot_name})"]
    return "\n".join(lines) + "\n"


def _plot(path: Path, manifests: dict[str, Manifest | None], curves: dict[str, list[dict[str, Any]]],
          steps: RunSteps, levels: list[str], wikisql: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rl = steps.rl_kind or "rl"
    panels = [(steps.sft, "loss", "SFT training loss", "loss"), (steps.rm, "loss", "RM training loss", "loss"),
              (steps.rl, "reward", f"RL ({rl}) reward per batch", "mean reward"),
              (steps.rl, "kl", f"RL ({rl}) KL to the SFT policy", "KL (nats per token)")]
    fig, axes = plt.subplots(1, 5, figsize=(22, 4))
    for ax, (step, key, title, ylabel) in zip(axes, panels, strict=False):
        rows = [r for r in curves.get(step or "", []) if key in r]
        if rows:
            xs = [r.get("step", i) for i, r in enumerate(rows)]
            ax.plot(xs, [r[key] for r in rows])
        else:
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
    ax = axes[-1]
    width = 0.2
    xs = range(len(levels))
    bars = (((steps.evaluate_sft, "ex", "SFT EX"), (steps.evaluate_rl, "ex", "RL EX"),
             (steps.evaluate_sft, "em", "SFT EM"), (steps.evaluate_rl, "em", "RL EM")))
    for j, (step, metric, label) in enumerate(bars):
        m = manifests.get(step) if step else None
        vals = [(m.metrics.get(metric + ("" if h == "all" else f"_{h}")) or 0.0) if m else 0.0 for h in levels]
        ax.bar([x + (j - 1.5) * width for x in xs], vals, width, label=label)
    ax.set_xticks(list(xs), levels)
    ax.set_ylim(0, 1.05)
    if wikisql:  # WikiSQL has no hardness levels; its EM is logical-form accuracy
        ax.set_title("Dev EX / logical-form EM (WikiSQL), SFT vs RL")
        ax.set_xlabel("all questions")
    else:
        ax.set_title("Dev EX / EM per hardness, SFT vs RL")
        ax.set_xlabel("hardness level")
    ax.set_ylabel("accuracy (share of questions)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _levels(counts: dict[str, int] | None, wikisql: bool) -> list[str]:
    """The report's rows: the hardness levels with questions and ``all``; WikiSQL has ``all`` only."""
    return ["all"] if wikisql else [h for h in HARDNESS if counts is None or counts.get(h) or h == "all"]


def _level_counts(doc: dict[str, Any] | None) -> dict[str, int] | None:
    """Questions per hardness level (and ``all``) of an evaluate step's ``summary.json``."""
    if not doc:
        return None
    counts = {level: int(row.get("count", 0)) for level, row in (doc.get("levels") or {}).items()}
    counts["all"] = int(doc.get("n", sum(counts.values())))
    return counts


def write_run_report(run_config: RunConfig, *, base_dir: Path | None = None) -> Path:
    """Write ``report.md`` + ``report.png`` locally and publish them as ``runs/<run>/report``."""
    store = open_store(run_config.store, base_dir=base_dir)
    run_id = run_config.run_id
    graph = steps_for(run_config)
    manifests = collect_run(store, run_id, graph)
    steps = run_steps(graph)
    root = Path(run_config.workdir)
    if not root.is_absolute():
        root = (base_dir or Path.cwd()) / root
    out = root / run_id / "report"
    out.mkdir(parents=True, exist_ok=True)
    by_name = {s.name: s for s in graph}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        curves = {s: _read_log(store, run_id, by_name[s], m, t) for s, m in manifests.items() if m is not None}

        def text(step: str | None, name: str) -> str | None:
            return _fetch_one(store, run_id, step, manifests.get(step), name, t) if step else None

        summary_text = text(steps.evaluate_sft, "summary.json") or text(steps.evaluate_rl, "summary.json")
        summary = json.loads(summary_text) if summary_text else None
        counts = _level_counts(summary)
        wikisql = bool(summary) and summary.get("metric") == "wikisql"
        changes = None
        parts = [text(steps.evaluate_sft, "per_example.tsv"), text(steps.evaluate_rl, "per_example.tsv"),
                 text(steps.predict_sft, "predictions.jsonl"), text(steps.predict_rl, "predictions.jsonl")]
        if all(p is not None for p in parts):
            questions = _jsonl(text(steps.prepare, "dev_meta.jsonl"))
            changes = compare_predictions(_tsv(parts[0]), _tsv(parts[1]), _jsonl(parts[2]), _jsonl(parts[3]),
                                          questions)
    _plot(out / "report.png", manifests, curves, steps, _levels(counts, wikisql), wikisql=wikisql)
    (out / "report.md").write_text(render_report(run_id, manifests, curves, "report.png", counts=counts,
                                                 changes=changes, steps=steps, graph=graph, wikisql=wikisql))
    publish(store, f"runs/{run_id}/report", out, run_id=run_id, step="report", kind="report",
            config_hash="", metrics={}, started_at=datetime.now(UTC))
    return out / "report.md"
