"""``t2s demo-data`` in a subprocess: writes the dataset, refuses a directory it did not write."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_prepare import t2s


def test_demo_data_writes_then_prepares(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = t2s("demo-data", "--out", out, "--seed", 7, "--train-size", 120, "--dev-size", 30)
    assert res.returncode == 0, res.stderr
    assert "120 train and 30 dev questions" in res.stdout
    assert len(json.loads((out / "dev.json").read_text())) == 30
    # the demo dataset is a Spider dataset: `t2s prepare` reads it with its databases
    res = t2s("prepare", "--input", out / "train.json", "--tables", out / "tables.json", "--db-dir",
              out / "database", "--out", tmp_path / "train.jsonl")
    assert res.returncode == 0, res.stderr
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 120


def test_demo_data_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    res = t2s("demo-data", "--out", tmp_path, "--size", "small")
    assert res.returncode == 2
    assert "does not hold a demo dataset" in res.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
