"""The published outputs: per-example TSV, summary JSON, Markdown with the official table, PNG chart."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from text2sql_core.evaluation.api import EvalResult, ExampleScore
from text2sql_core.evaluation.report import format_table, write_outputs

EXAMPLES = [
    ExampleScore(1, "concert_singer", "easy", 1, 1),
    ExampleScore(2, "concert_singer", "easy", 0, 1),
    ExampleScore(3, "pets_1", "hard", 0, 0, "parse: Error col: as; exec: syntax: no such column: x"),
    ExampleScore(4, "pets_1", "extra", 1, 0, "parse: ')' expected after a value"),
]


@pytest.fixture
def result() -> EvalResult:
    return EvalResult(EXAMPLES, "all", "spider", False, False, ("easy", "medium", "hard", "extra"),
                      seconds=0.5)


def test_table_is_laid_out_like_the_official_printout(result: EvalResult):
    # upstream: "{:20} " + " ".join([cell format] * levels), cells 20 wide, left-aligned
    lines = format_table(result).splitlines()
    assert lines[0] == " " * 21 + " ".join(f"{lv:20}" for lv in ("easy", "medium", "hard", "extra", "all"))
    assert lines[1] == f"{'count':<21}" + " ".join(f"{n:<20d}" for n in (2, 0, 1, 1, 4))
    assert lines[2] == "=====================   EXECUTION ACCURACY     ====================="
    assert lines[3] == f"{'execution':<21}" + " ".join(f"{v:<20.3f}" for v in (0.5, 0, 0, 1, 0.5))
    assert lines[5] == "====================== EXACT MATCHING ACCURACY ====================="
    assert lines[6] == f"{'exact match':<21}" + " ".join(f"{v:<20.3f}" for v in (1, 0, 0, 0, 0.5))


def test_outputs(result: EvalResult, tmp_path: Path):
    paths = write_outputs(result, tmp_path / "out")
    assert sorted(paths) == ["per_example.tsv", "report.md", "scores.png", "summary.json"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(paths)  # no temporary files left
    with paths["per_example.tsv"].open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert list(rows[0]) == ["line", "db_id", "hardness", "ex", "em", "error"]
    assert rows[2] == {"line": "3", "db_id": "pets_1", "hardness": "hard", "ex": "0", "em": "0",
                       "error": "parse: Error col: as; exec: syntax: no such column: x"}
    summary = json.loads(paths["summary.json"].read_text())
    assert (summary["n"], summary["ex"], summary["em"], summary["examples_with_error"]) == (4, 0.5, 0.5, 2)
    assert summary["levels"]["easy"] == {"count": 2, "ex": 0.5, "em": 1.0}
    report = paths["report.md"].read_text()
    assert "| easy | 2 | 0.500 | 1.000 |" in report and format_table(result).rstrip() in report
    assert "![EX and EM per level](scores.png)" in report
    png = paths["scores.png"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


def test_exec_only_leaves_em_blank(tmp_path: Path):
    only_ex = EvalResult([ExampleScore(1, "d", "easy", 1, None)], "exec", "spider", False, False,
                         ("easy", "medium", "hard", "extra"))
    paths = write_outputs(only_ex, tmp_path)
    assert paths["per_example.tsv"].read_text().splitlines()[1] == "1\td\teasy\t1\t\t"
    assert "EXACT MATCHING" not in format_table(only_ex)
    assert json.loads(paths["summary.json"].read_text())["em"] is None
