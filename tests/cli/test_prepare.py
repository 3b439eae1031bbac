"""``t2s prepare`` end to end in a subprocess: the worked example byte for byte, exit code 2 on bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def t2s(*args: object) -> subprocess.CompletedProcess[str]:
    """Run the CLI as the console script does (``main``), from the repository root; never raises on exit codes."""
    return subprocess.run([sys.executable, "-m", "text2sql_core.cli", *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_worked_example_reproduced_exactly(tmp_path: Path, shared_dir: Path) -> None:
    ref = json.loads((shared_dir / "fixtures" / "reference_example.json").read_text())
    sft = ref["sft_record"]
    data = tmp_path / "in.json"
    data.write_text(json.dumps([{"db_id": sft["db_id"], "question": ref["question"], "query": sft["output"]}]))
    out = tmp_path / "out" / "train.jsonl"
    res = t2s("prepare", "--format", "spider", "--input", data, "--tables",
              shared_dir / "spider-sample" / "tables_all.json", "--out", out)
    assert res.returncode == 0, res.stderr
    assert out.read_text() == json.dumps(sft, ensure_ascii=False) + "\n"
    assert (tmp_path / "out" / "train_flat.jsonl").read_text() == json.dumps(ref["flat_record"]) + "\n"


def test_spider_sample_dev_with_databases_and_options(tmp_path: Path, spider_sample: Path) -> None:
    out, flat = tmp_path / "dev.jsonl", tmp_path / "flat" / "dev_prompts.jsonl"
    res = t2s("prepare", "--input", spider_sample / "dev.json", "--tables", spider_sample / "tables.json",
              "--db-dir", spider_sample / "database", "--out", out, "--flat-out", flat)
    assert res.returncode == 0, res.stderr
    assert "prepared 337 records on 6 databases" in res.stdout
    assert len(out.read_text().splitlines()) == len(flat.read_text().splitlines()) == 337
    res = t2s("prepare", "--input", spider_sample / "dev.json", "--tables", spider_sample / "tables.json",
              "--db-dir", spider_sample / "database", "--out", tmp_path / "s.jsonl", "--sample-values", "2",
              "--max-examples", "5")
    assert res.returncode == 0, res.stderr
    first = json.loads((tmp_path / "s.jsonl").read_text().splitlines()[0])
    assert "Stadium_ID (e.g. 1, 2)" in first["instruction"]
    assert len((tmp_path / "s_flat.jsonl").read_text().splitlines()) == 5


def test_multi_turn_format(tmp_path: Path, spider_sample: Path) -> None:
    data = tmp_path / "sparc.json"
    data.write_text(json.dumps([{"database_id": "pets_1", "interaction": [
        {"utterance": "Show all pets.", "query": "SELECT * FROM Pets"},
        {"utterance": "Only dogs.", "query": "SELECT * FROM Pets WHERE PetType = 'dog'"}]}]))
    res = t2s("prepare", "--format", "sparc", "--input", data, "--tables", spider_sample / "tables.json",
              "--out", tmp_path / "o.jsonl")
    assert res.returncode == 0, res.stderr
    second = json.loads((tmp_path / "o.jsonl").read_text().splitlines()[1])
    assert second["history"] == [["###Input:\nShow all pets.\n\n###Response:", "SELECT * FROM Pets"]]


GOOD = [{"db_id": "pets_1", "question": "How many pets?", "query": "SELECT count(*) FROM Pets"}]


#: each bad input, and what the one error line must say (file, record, field)
BAD_INPUTS = {
    "malformed_json": r"in.json: malformed JSON in dataset",
    "missing_tables": r"missing.json: tables file not found",
    "no_database": r"in.json, record 1, field `db_id`: db_id 'academic' has no database",
    "duplicate_db_id": r"tables.json, record 6, field `db_id`: duplicate db_id 'pets_1'",
    "empty_question": r"in.json, record 1, field `question`: is empty",
    "empty_sql": r"in.json, record 1, field `query`: is empty",
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path, spider_sample: Path, case: str) -> None:
    records = GOOD + [{"db_id": "pets_1", "question": "Pet ages?", "query": "SELECT pet_age FROM Pets"}]
    tables = json.loads((spider_sample / "tables.json").read_text())
    if case == "no_database":
        tables += [t for t in json.loads((spider_sample / "tables_all.json").read_text()) if t["db_id"] == "academic"]
        records[1]["db_id"] = "academic"
    if case == "duplicate_db_id":
        tables.append(next(t for t in tables if t["db_id"] == "pets_1"))
    if case == "empty_question":
        records[1]["question"] = " "
    if case == "empty_sql":
        records[1]["query"] = ""
    data, tables_file = tmp_path / "in.json", tmp_path / "tables.json"
    data.write_text(json.dumps(records)[:-3] if case == "malformed_json" else json.dumps(records))
    tables_file.write_text(json.dumps(tables))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = t2s("prepare", "--input", data, "--out", out_dir / "x.jsonl", "--db-dir", spider_sample / "database",
              "--tables", tmp_path / "missing.json" if case == "missing_tables" else tables_file)
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("t2s: error: ")
    assert re.search(BAD_INPUTS[case], last), last
    assert list(out_dir.iterdir()) == []  # no partial output, no temporary file
