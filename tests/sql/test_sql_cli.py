"""``t2s sql``: rows as a table or JSON (exit 0), one error line naming the kind (exit 2), file untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from text2sql_core.cli import build_parser, main
from text2sql_core.cli.sql import format_table


@pytest.fixture
def db(shared_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "concert_singer.sqlite"
    shutil.copyfile(shared_dir / "spider-sample" / "database" / "concert_singer" / "concert_singer.sqlite",
                    target)
    return target


def _plain(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_table_output(db, capsys):
    sql = "SELECT Name, Age FROM singer ORDER BY Age"
    assert main(["sql", "--db", str(db), sql]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = _plain(db, sql)
    assert lines[0].split(" | ") == ["Name".ljust(len(lines[0].split(" | ")[0])), "Age"]
    assert set(lines[1]) <= {"-", "+"}
    body = [tuple(c.strip() for c in line.split(" | ")) for line in lines[2:-1]]
    assert body == [(name, str(age)) for name, age in expected]
    assert lines[-1].startswith(f"({len(expected)} rows, ")


def test_json_output(db, capsys):
    sql = "SELECT Name, Age FROM singer ORDER BY Age"
    assert main(["sql", "--db", str(db), "--json", sql]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["columns"] == ["Name", "Age"]
    assert [tuple(r) for r in doc["rows"]] == _plain(db, sql)
    assert doc["row_count"] == len(doc["rows"]) and doc["elapsed_s"] >= 0


def test_format_table_nulls_blobs_and_long_values():
    text = format_table(("a", "b"), ((None, b"\x01\xff"), (1.5, "x" * 100)))
    lines = text.splitlines()
    assert "NULL" in lines[2] and "x'01ff'" in lines[2]
    assert lines[3].endswith("…") and len(lines[3]) < 100


def _run_handler(argv: list[str]) -> int:
    """Parse like ``t2s`` and call the command's handler (errors propagate; main() maps them to exit codes)."""
    args = build_parser().parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize(("args", "kind"), [
    (["DROP TABLE singer"], "denied"),
    (["SELECT 1; SELECT 2"], "denied"),
    (["SELEC 1"], "syntax"),
    (["--timeout", "0.3", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"],
     "timeout"),
    (["--row-cap", "2", "SELECT * FROM singer"], "row_limit"),
    (["SELECT abs(-9223372036854775807 - 1)"], "runtime"),
])
def test_sql_errors_are_bad_input_naming_the_kind(db, args, kind, capsys):
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    assert _run_handler(["sql", "--db", str(db), *args]) == 2
    err = capsys.readouterr().err
    assert f"SQL {kind} error" in err and str(db) in err
    assert err.count("\n") == 1
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


@pytest.mark.parametrize(("args", "message"), [
    (["--db", "{missing}", "SELECT 1"], "database file not found"),
    (["--db", "{db}", "--timeout", "0", "SELECT 1"], "--timeout must be a number of seconds in (0, 86400]"),
    (["--db", "{db}", "--timeout", "inf", "SELECT 1"], "got inf"),
    (["--db", "{db}", "--timeout", "nan", "SELECT 1"], "got nan"),
    (["--db", "{db}", "--row-cap", "-1", "SELECT 1"], "--row-cap must be >= 0"),
])
def test_bad_input(db, tmp_path, args, message, capsys):
    argv = [a.format(db=db, missing=tmp_path / "missing.sqlite") for a in args]
    assert _run_handler(["sql", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_console_process_exit_codes(db, tmp_path, repo_root):
    """The real process: rows on stdout with exit 0; a denied write or a missing file: exit 2, one error line."""
    def t2s(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "text2sql_core.cli", "sql", *args], capture_output=True,
                              text=True, cwd=repo_root, timeout=60, check=False)

    ok = t2s("--db", str(db), "--json", "SELECT count(*) FROM singer")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["rows"] == [list(r) for r in _plain(db, "SELECT count(*) FROM singer")]
    denied = t2s("--db", str(db), "DELETE FROM singer")
    assert denied.returncode == 2
    assert "t2s: error:" in denied.stderr and "SQL denied error" in denied.stderr
    assert denied.stderr.count("\n") == 1, denied.stderr  # one line off a terminal too
    assert denied.stdout == ""
    missing = t2s("--db", str(tmp_path / "missing.sqlite"), "SELECT 1")
    assert missing.returncode == 2 and "database file not found" in missing.stderr
    assert missing.stderr.count("\n") == 1, missing.stderr
