"""The sandbox's memory bound holds for every result type; table-valued functions are reads."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from text2sql_core.sql.sandbox import ErrorKind, SandboxPool, execute

PEAK_RSS_BOUND_MIB = 512
ROWS = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r LIMIT 100000)"
MEMORY_HUNGRY = [
    # numbers cost Python memory too: 2000 integer columns x 100000 rows is ~7 GB of int objects
    (f"{ROWS} SELECT {', '.join(f'x + {i}' for i in range(2000))} FROM r", {ErrorKind.ROW_LIMIT}),
    # one row of 500 x 800 kB strings: 400 MB in a single fetch
    ("SELECT " + ", ".join("hex(zeroblob(400000))" for _ in range(500)), {ErrorKind.ROW_LIMIT, ErrorKind.RUNTIME}),
    # floats over many rows: the budget, not the row cap, stops them
    ("WITH RECURSIVE r(x) AS (SELECT 1.5 UNION ALL SELECT x + 1 FROM r) SELECT x, x * 2.0, x * 3.0 FROM r",
     {ErrorKind.ROW_LIMIT, ErrorKind.TIMEOUT}),
]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "t.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (a INTEGER, b TEXT)")
    conn.execute("INSERT INTO t VALUES (1, 'x')")
    conn.commit()
    conn.close()
    return path


def _peak_rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc")
@pytest.mark.parametrize(("sql", "kinds"), MEMORY_HUNGRY, ids=["2000-int-columns", "hex-row", "float-rows"])
def test_memory_hungry_queries_stay_under_the_peak_rss_bound(db: Path, sql: str, kinds) -> None:
    with SandboxPool(processes=1) as pool:
        (result,) = pool.run([(db, sql)], timeout_s=20, row_cap=10_000_000)
        peak = _peak_rss_mib(pool.worker_pids[0])
        assert result.error_kind in kinds, result.error
        assert peak < PEAK_RSS_BOUND_MIB, f"worker peaked at {peak} MiB"
        (after,) = pool.run([(db, "SELECT a, b FROM t")])  # the worker still serves
        assert after.rows == ((1, "x"),)


def test_budget_is_checked_before_a_row_is_kept(db: Path) -> None:
    result = execute(db, f"{ROWS} SELECT {', '.join(f'x + {i}' for i in range(2000))} FROM r", row_cap=10**7,
                     timeout_s=60)
    assert result.error_kind is ErrorKind.ROW_LIMIT and "MiB of memory" in result.error
    assert "2000 columns" in result.error


@pytest.mark.parametrize(("sql", "rows"), [
    ("SELECT value FROM json_each('[1,2,3]')", ((1,), (2,), (3,))),
    ("SELECT name FROM pragma_table_info('t')", (("a",), ("b",))),
    ("SELECT j.value FROM t, json_each('[7]') AS j", ((7,),)),
])
def test_table_valued_functions_are_reads(db: Path, sql: str, rows) -> None:
    result = execute(db, sql)
    assert result.ok, result.error
    assert result.rows == rows


@pytest.mark.parametrize("sql", ["REINDEX", "REINDEX t", "UPDATE sqlite_master SET sql = ''",
                                 "INSERT INTO sqlite_master VALUES ('table', 'x', 'x', 0, '')"])
def test_non_queries_are_not_reported_as_syntax_errors(db: Path, sql: str) -> None:
    result = execute(db, sql)
    assert result.error_kind in (ErrorKind.DENIED, ErrorKind.SYNTAX)
    if sql.startswith("REINDEX"):
        assert result.error_kind is ErrorKind.DENIED, result.error
