"""``t2s eval``: the table on stdout, the four outputs, exit 2 with one clear line on bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from text2sql_core.cli import main


def _args(sample: Path, pred: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--gold", str(sample / "dev_gold.sql"), "--pred", str(pred),
            "--db", str(sample / "database"), "--tables", str(sample / "tables.json"), "--out", str(out),
            "--no-progress", *extra]


def test_eval_prints_the_official_table_and_writes_outputs(spider_sample: Path, tmp_path: Path, capsys):
    pred = spider_sample / "predictions" / "c3sql_chatgpt.sql"
    assert main(_args(spider_sample, pred, tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert "EXECUTION ACCURACY" in out and "EXACT MATCHING ACCURACY" in out
    execution = next(line for line in out.splitlines() if line.startswith("execution"))
    assert execution.split()[-1] == "0.849"
    assert next(line for line in out.splitlines() if line.startswith("exact match")).split()[-1] == "0.445"
    with (tmp_path / "out" / "per_example.tsv").open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) == 337 and {p.name for p in (tmp_path / "out").iterdir()} == {
        "per_example.tsv", "summary.json", "report.md", "scores.png"}


def test_eval_exec_only_needs_no_tables(spider_sample: Path, tmp_path: Path, capsys):
    pred = tmp_path / "gold_as_pred.sql"
    pred.write_text("".join(line.split("\t")[0] + "\n" for line in
                            (spider_sample / "dev_gold.sql").read_text().splitlines()))
    args = _args(spider_sample, pred, tmp_path / "out", "--etype", "exec", "--workers", "1")
    del args[args.index("--tables"):args.index("--tables") + 2]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "EXACT MATCHING" not in out and next(
        line for line in out.splitlines() if line.startswith("execution")).split()[-1] == "1.000"


def test_misaligned_predictions_exit_2_with_one_line(spider_sample: Path, tmp_path: Path, capsys):
    pred = tmp_path / "short.sql"
    pred.write_text("SELECT count(*) FROM singer\n")
    assert main(_args(spider_sample, pred, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "t2s: error:" in err and "1 predictions for 337 gold examples" in err
    assert not (tmp_path / "out").exists()


def test_help_names_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    for option in ("--gold", "--pred", "--db", "--tables", "--out", "--etype", "--plug-value",
                   "--keep-distinct", "--metric", "--timeout", "--workers"):
        assert option in text
