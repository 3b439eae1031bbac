"""WikiSQL: logical forms into SQL, ``t2s prepare --format wikisql`` and ``t2s eval --metric wikisql``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.data.wikisql_fixture import QUESTIONS, write_wikisql
from text2sql_core.data import wikisql
from text2sql_core.sql.sandbox import execute


def t2s(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "text2sql_core.cli", *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def wiki(tmp_path: Path) -> dict[str, Path]:
    return write_wikisql(tmp_path / "wikisql")


def _load(wiki: dict[str, Path]):
    tables = wikisql.read_tables(wiki["tables"])
    return tables, wikisql.read_questions(wiki["questions"], tables)


def _rows(db: Path, sql: str) -> tuple:
    result = execute(db, sql)
    assert result.ok, (sql, result.error)
    return result.rows


def test_every_aggregation_and_operator_runs_with_wikisql_semantics(wiki):
    tables, questions = _load(wiki)
    assert {q.form.agg for q in questions} == set(range(len(wikisql.AGG_OPS)))
    assert {c[1] for q in questions for c in q.form.conds} == set(range(len(wikisql.COND_OPS)))
    results = [_rows(wiki["db"], wikisql.execution_sql(q.form, tables[q.table_id])) for q in questions]
    # text is stored lower-cased; numbers given as text compare as numbers ("10", "7")
    assert results == [(("antonio lang",),), ((32.0,),), ((2.0,),), ((3,),), ((42.5,),), ((21.25,),),
                       ((32.0,),), (("guard",),)]


def test_the_target_sql_uses_header_names_and_runs_after_mapping(wiki):
    tables, questions = _load(wiki)
    targets = [wikisql.target_sql(q.form, tables[q.table_id]) for q in questions]
    assert targets[0] == 'SELECT "Player" FROM table_1_10015132_11 WHERE "School/Club Team" = \'Duke\''
    assert targets[3] == 'SELECT COUNT("Player") FROM table_1_10015132_11 WHERE "No." > 10'
    assert targets[4] == "SELECT SUM(\"Points\") FROM table_2_123 WHERE \"Year\" = '1995'"  # text column: quoted
    assert targets[6].endswith("\"Player\" = 'Shaquille O''Neal'")
    for q, sql in zip(questions, targets, strict=True):
        table = tables[q.table_id]
        gold = _rows(wiki["db"], wikisql.execution_sql(q.form, table))
        mine = _rows(wiki["db"], wikisql.prediction_sql(sql, table))
        assert wikisql.result_key(mine) == wikisql.result_key(gold)
        assert wikisql.parse_logical_form(sql, table).key() == q.form.key()


def test_predictions_may_use_bare_header_names_or_database_names(wiki):
    tables, _ = _load(wiki)
    t2 = tables["2-123"]
    assert wikisql.prediction_sql("SELECT SUM(Points) FROM table_2_123 WHERE Year = '1995' AND Team = 'RAPTORS'",
                                  t2) == "SELECT SUM(col2) FROM table_2_123 WHERE col0 = '1995' AND col1 = 'raptors'"
    # a header that is also a keyword stays a keyword when bare; a string literal is never renamed
    t1 = tables["1-10015132-11"]
    assert wikisql.prediction_sql("SELECT col3 FROM table_1_10015132_11 WHERE col0 = 'Player'", t1) == \
        "SELECT col3 FROM table_1_10015132_11 WHERE col0 = 'player'"
    form = wikisql.parse_logical_form("select col3 from table_1_10015132_11 where col0 = 'A and B' AND col1 = 7", t1)
    assert form == wikisql.LogicalForm(3, 0, ((0, 0, "a and b"), (1, 0, 7.0)))
    assert wikisql.parse_logical_form("SELECT col0 FROM table_1_10015132_11 ORDER BY col1", t1) is None


def test_prepare_writes_dbgpt_records_over_the_real_header_names(wiki, tmp_path):
    out = tmp_path / "dev_prepared.jsonl"
    res = t2s("prepare", "--format", "wikisql", "--input", wiki["questions"], "--tables", wiki["tables"],
              "--db", wiki["db"], "--out", out)
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(QUESTIONS)
    first = records[0]
    assert first["db_id"] == "1-10015132-11" and first["input"].startswith("###Input:\nWho played for Duke?")
    assert "table_1_10015132_11" in first["instruction"] and "School/Club Team" in first["instruction"]
    assert first["output"] == 'SELECT "Player" FROM table_1_10015132_11 WHERE "School/Club Team" = \'Duke\''
    assert (tmp_path / "dev_prepared_flat.jsonl").is_file()


def test_eval_scores_gold_perfectly_and_mistakes_as_wrong(wiki, tmp_path):
    tables, questions = _load(wiki)
    preds = [wikisql.target_sql(q.form, tables[q.table_id]) for q in questions]
    preds[0] = "SELECT col0 FROM table_1_10015132_11 WHERE col5 = 'DUKE'"  # database names, other case
    preds[1] = 'SELECT MAX("No.") FROM table_1_10015132_11'  # same answer, other logical form: EX only
    preds[2] = "SELECT MIN(col1) FROM table_1_10015132_11 WHERE col3 = 'Center'"  # wrong answer
    preds[3] = "SELECT COUNT(nope) FROM table_1_10015132_11"  # does not run
    pred_file = tmp_path / "pred.sql"
    pred_file.write_text("\n".join(preds) + "\n")
    res = t2s("eval", "--metric", "wikisql", "--gold", wiki["questions"], "--pred", pred_file, "--db", wiki["db"],
              "--tables", wiki["tables"], "--out", tmp_path / "eval", "--workers", "0")
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    n = len(QUESTIONS)
    assert summary["n"] == n and summary["ex"] == (n - 2) / n and summary["em"] == (n - 3) / n
    rows = (tmp_path / "eval" / "per_example.tsv").read_text().splitlines()
    assert rows[4].split("\t")[2:4] == ["0", "0"] and "syntax" in rows[4]


@pytest.mark.parametrize(("line", "change", "named"), [
    (2, {"table_id": "9-999"}, "field `table_id`: table id '9-999' has no table"),
    (3, {"sql": {"sel": 6, "agg": 0, "conds": []}}, "field `sql.sel`: column index 6 is out of range (0..5)"),
    (3, {"sql": {"sel": 0, "agg": 0, "conds": [[0, 3, "x"]]}}, "field `sql.conds[0]`: operator index 3"),
])
def test_bad_questions_exit_2_naming_the_line(tmp_path, line, change, named):
    questions = [json.loads(x) for x in write_wikisql(tmp_path / "ok")["questions"].read_text().splitlines()]
    questions[line - 1].update(change)
    wiki = write_wikisql(tmp_path / "bad", questions)
    res = t2s("prepare", "--format", "wikisql", "--input", wiki["questions"], "--tables", wiki["tables"],
              "--db", wiki["db"], "--out", tmp_path / "out.jsonl")
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1  # one line
    assert res.stderr.startswith(f"t2s: error: {wiki['questions']}, record line {line}, {named}")
    assert not (tmp_path / "out.jsonl").exists()


def test_prepare_needs_the_database_file(wiki, tmp_path):
    res = t2s("prepare", "--format", "wikisql", "--input", wiki["questions"], "--tables", wiki["tables"],
              "--out", tmp_path / "out.jsonl")
    assert res.returncode == 2 and "field `--db`" in res.stderr
