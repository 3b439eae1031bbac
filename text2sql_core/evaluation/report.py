"""What an evaluation publishes: ``per_example.tsv``, ``summary.json``, ``report.md``, ``scores.png``.

The text table is laid out like the official evaluator's printout (levels as columns, 20 wide), so
a result can be set beside a published one line by line.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from ..data.dataset import write_files_atomically
from .api import EvalResult

__all__ = ["CHART_NAME", "format_table", "per_example_tsv", "render_chart", "summary", "write_outputs"]

CHART_NAME = "scores.png"
TSV_COLUMNS = ("line", "db_id", "hardness", "ex", "em", "error")


def _cells(label: str, values: list[Any], fmt: str) -> str:
    return f"{label:20} " + " ".join(format(v, fmt) for v in values)


def format_table(result: EvalResult) -> str:
    """The count / execution / exact-match table per level, as the official evaluator prints it."""
    table = result.table()
    levels = list(table)
    lines = [_cells("", levels, "20"), _cells("count", [table[lv]["count"] for lv in levels], "<20d")]
    if table["all"]["ex"] is not None:
        title = "EXECUTION ACCURACY" + (" (BIRD)" if result.metric == "bird" else "")
        lines += [f"{'=' * 21}   {title:<22} {'=' * 21}",
                  _cells("execution", [table[lv]["ex"] for lv in levels], "<20.3f")]
    if table["all"]["em"] is not None:
        lines += ["", f"{'=' * 22} EXACT MATCHING ACCURACY {'=' * 21}",
                  _cells("exact match", [table[lv]["em"] for lv in levels], "<20.3f")]
    return "\n".join(lines) + "\n"


def per_example_tsv(result: EvalResult) -> str:
    def cell(value: Any) -> str:
        return "" if value is None else str(value)

    rows = ["\t".join(TSV_COLUMNS)]
    for e in result.examples:
        rows.append("\t".join((str(e.line), e.db_id, e.hardness, cell(e.ex), cell(e.em), e.error)))
    return "\n".join(rows) + "\n"


def summary(result: EvalResult) -> dict[str, Any]:
    table = result.table()
    return {
        "n": result.n,
        "etype": result.etype,
        "metric": result.metric,
        "plug_value": result.plug_value,
        "keep_distinct": result.keep_distinct,
        "ex": table["all"]["ex"],
        "em": table["all"]["em"],
        "levels": {level: row for level, row in table.items() if level != "all"},
        "examples_with_error": sum(1 for e in result.examples if e.error),
        "queries_executed": result.queries_executed,
        "seconds": round(result.seconds, 3),
        "options": result.options,
    }


def shown_levels(table: dict[str, dict[str, Any]]) -> list[str]:
    """The levels worth a row or a bar: those with questions (an empty level's 0.000 would read as a score)."""
    return [level for level, row in table.items() if row["count"] or level == "all"]


def _markdown(result: EvalResult, *, chart: bool = True, title: str | None = None) -> str:
    table = result.table()
    flags = [f"etype `{result.etype}`", f"metric `{result.metric}`",
             f"values {'plugged from the gold' if result.plug_value else 'as predicted'}",
             f"DISTINCT {'kept' if result.keep_distinct else 'ignored'}"]

    def pct(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    lines = [f"# {title or 'Evaluation'}", "", f"{result.n} examples; " + ", ".join(flags) + ".", "",
             "| level | count | execution (EX) | exact match (EM) |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {level} | {table[level]['count']} | {pct(table[level]['ex'])} | {pct(table[level]['em'])} |"
              for level in shown_levels(table)]
    empty = [level for level in table if level not in shown_levels(table)]
    if empty:
        lines += ["", f"No {' / '.join(empty)} questions in this set."]
    lines += ["", "As the official evaluator prints it:", "", "```", format_table(result).rstrip("\n"), "```", ""]
    if chart:
        lines += [f"![EX and EM per level]({CHART_NAME})", ""]
    return "\n".join(lines)


def render_chart(result: EvalResult, *, title: str | None = None) -> bytes:
    """A PNG bar chart of EX and EM per level (and overall)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    table = result.table()
    levels = shown_levels(table)
    series = [(name, [table[lv][key] for lv in levels]) for key, name in (("ex", "EX"), ("em", "EM"))
              if table["all"][key] is not None]
    fig = Figure(figsize=(7, 3.6), dpi=110)
    ax = fig.subplots()
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(levels))]
        bars = ax.bar(xs, values, width=width, label=name)
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=7, padding=2)
    ax.set_xticks(range(len(levels)), [f"{lv}\n(n={table[lv]['count']})" for lv in levels])
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("hardness level (questions)")
    ax.set_ylabel("accuracy (share of questions)")
    ax.set_title(title or f"{result.metric} evaluation of {result.n} predictions")
    ax.legend(loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_outputs(result: EvalResult, out_dir: str | Path, *, chart: bool = True,
                  title: str | None = None) -> dict[str, Path]:
    """Write the outputs into ``out_dir`` at once (all or none); returns their paths.

    ``chart=False`` skips ``scores.png`` and with it matplotlib's import (about a second); ``title``
    names what was scored (the evaluate step writes its step name) in the report and the chart.
    """
    out = Path(out_dir)
    files: dict[Path, str | bytes] = {
        out / "per_example.tsv": per_example_tsv(result),
        out / "summary.json": json.dumps(summary(result), indent=2) + "\n",
        out / "report.md": _markdown(result, chart=chart, title=title),
    }
    if chart:
        files[out / CHART_NAME] = render_chart(result, title=title)
    write_files_atomically(files)
    return {path.name: path for path in files}
