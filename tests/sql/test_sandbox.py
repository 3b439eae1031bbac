"""The SQL sandbox on a real Spider database: hostile statements fail within their limit and never touch
the file; normal queries return what plain SQLite returns; the pool keeps order and survives stuck and
killed workers."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from text2sql_core.errors import BadInput, Retryable
from text2sql_core.sql import ErrorKind, SandboxPool, SQLResult, execute

# A broken timeout would hang rather than fail: pytest-timeout turns that into a failure.
pytestmark = pytest.mark.timeout(120)

TIMEOUT = 0.5
GRACE = 1.0      # the pool's watchdog grace used below
SLACK = 0.75     # scheduling noise on a loaded 2-core CI machine
ROW_CAP = 1000

D, S, T, R, L = ErrorKind.DENIED, ErrorKind.SYNTAX, ErrorKind.TIMEOUT, ErrorKind.RUNTIME, ErrorKind.ROW_LIMIT
SIC6 = ", ".join(f"singer_in_concert s{i}" for i in range(6))
SIC8 = ", ".join(f"singer_in_concert s{i}" for i in range(8))
ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)"

# (statement, error kinds it may end with). {outside} is a path beside the database that must never appear.
HOSTILE: list[tuple[str, set[ErrorKind]]] = [
    ("DROP TABLE singer", {D}),
    ("DELETE FROM singer", {D}),
    ("INSERT INTO singer (Singer_ID, Name) VALUES (99, 'Mallory')", {D}),
    ("UPDATE singer SET Age = 0", {D}),
    ("REPLACE INTO stadium (Stadium_ID, Name) VALUES (1, 'x')", {D}),
    ("CREATE TABLE evil (x)", {D}),
    ("CREATE TEMP TABLE evil AS SELECT * FROM singer", {D}),
    ("CREATE INDEX evil ON singer (Age)", {D}),
    ("CREATE TEMP TRIGGER evil AFTER INSERT ON singer BEGIN SELECT 1; END", {D}),
    ("CREATE VIRTUAL TABLE temp.evil USING fts5(x)", {D}),
    ("ALTER TABLE singer RENAME TO singer2", {D}),
    ("INSERT INTO sqlite_master VALUES ('table', 'x', 'x', 0, 'CREATE TABLE x(a)')", {D}),
    ("ATTACH DATABASE '{outside}' AS evil", {D}),
    ("DETACH DATABASE main", {D}),
    ("VACUUM", {D}),
    ("VACUUM INTO '{outside}'", {D}),
    ("REINDEX", {D}),
    ("ANALYZE", {D}),
    ("BEGIN IMMEDIATE", {D}),
    ("SAVEPOINT evil", {D}),
    ("PRAGMA writable_schema = 1", {D}),
    ("PRAGMA writable_schema = ON; UPDATE sqlite_master SET sql = ''", {D}),
    ("PRAGMA query_only = 0", {D}),
    ("PRAGMA journal_mode = WAL", {D}),
    ("PRAGMA user_version = 7", {D}),
    ("PRAGMA temp_store_directory = '/tmp'", {D}),
    ("SELECT load_extension('/tmp/evil.so')", {D}),
    ("SELECT fts3_tokenizer('simple')", {D, S}),
    ("SELECT writefile('{outside}', 'data')", {D, S}),
    ("SELECT 1; DROP TABLE singer", {D}),
    ("SELECT * FROM singer; SELECT * FROM concert", {D}),
    ("SELECT 1 /* ; */; DELETE FROM singer -- trailing", {D}),
    ("SELECT 1\x00; DROP TABLE singer", {S}),
    (f"{ENDLESS} SELECT count(*) FROM c", {T}),
    (f"{ENDLESS} SELECT x FROM c", {L}),
    (f"{ENDLESS} SELECT group_concat(x) FROM c", {T, R}),
    (f"SELECT s0.Singer_ID FROM {SIC6}", {L}),                   # 6-way cartesian: 10^6 rows
    (f"SELECT count(*) FROM {SIC8}", {T}),                        # 8-way: 10^8 rows to count
    (f"{ENDLESS} SELECT zeroblob(1000000) FROM c", {L, T}),       # 1 MB a row: the result byte budget
    ("SELECT randomblob(1000000000)", {R}),
    ("SELECT zeroblob(2000000000)", {R}),
    ("SELECT '" + "x" * 1_100_000 + "'", {S}),                    # SQL text over the 1 MiB limit
    ("SELECT " + "(" * 5000 + "1" + ")" * 5000, {S}),             # parser stack / expression depth
]
# Statements whose work sits in one long C-level step (sorting a million rows) where the progress handler
# may reach them late: in process they overrun their timeout by up to a second; the pool bounds them.
POOL_ONLY: list[tuple[str, set[ErrorKind]]] = [
    (f"SELECT s0.Singer_ID FROM {SIC6} ORDER BY random()", {T}),  # the 6-way cartesian, sorted
]
# One C-level step that SQLite's progress handler cannot interrupt: only the pool's watchdog stops these.
STUCK: list[tuple[str, set[ErrorKind]]] = [
    ("SELECT length(printf('%.*c', 2000000000, 'x'))", {T}),
    ("SELECT instr(printf('%.*c', 1000000, 'a'), printf('%.*c', 500000, 'a') || 'b')", {T}),
]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def source_db(shared_dir: Path) -> Path:
    return shared_dir / "spider-sample" / "database" / "concert_singer" / "concert_singer.sqlite"


@pytest.fixture
def db(source_db: Path, tmp_path: Path) -> Path:
    """A private copy of concert_singer, alone in its folder so any side file (-wal, -journal) shows."""
    target = tmp_path / "db" / "concert_singer.sqlite"
    target.parent.mkdir()
    shutil.copyfile(source_db, target)
    return target


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(processes=2, grace_s=GRACE) as p:
        yield p


def _plain(db: Path, sql: str) -> tuple[tuple[str, ...], tuple[tuple, ...]]:
    """What unsandboxed SQLite returns, as the reference the sandbox must match."""
    conn = sqlite3.connect(db)
    try:
        cur = conn.execute(sql)
        return tuple(d[0] for d in cur.description), tuple(cur.fetchall())
    finally:
        conn.close()


def _gold(shared_dir: Path, db_ids: set[str]) -> list[tuple[Path, str]]:
    base = shared_dir / "spider-sample"
    jobs = []
    for line in (base / "dev_gold.sql").read_text().splitlines():
        sql, db_id = line.rsplit("\t", 1)
        if db_id in db_ids:
            jobs.append((base / "database" / db_id / f"{db_id}.sqlite", sql))
    assert jobs
    return jobs


# ------------------------------------------------------------------------------------------- hostile

def test_hostile_list_is_large_enough():
    assert len(HOSTILE) + len(POOL_ONLY) + len(STUCK) >= 20


@pytest.mark.parametrize(("sql", "kinds"), HOSTILE, ids=[s[:40] for s, _ in HOSTILE])
def test_hostile_statement_in_process_fails_within_limit_and_leaves_file_intact(db, sql, kinds):
    outside = db.parent.parent / "outside.sqlite"
    before_sha, before_files = _sha256(db), sorted(os.listdir(db.parent))
    started = time.monotonic()
    result = execute(db, sql.format(outside=outside), timeout_s=TIMEOUT, row_cap=ROW_CAP)
    wall = time.monotonic() - started
    assert not result.ok and result.rows is None
    assert result.error_kind in kinds, result.error
    assert result.error
    # The progress handler fires between VM steps; one step (a big sort) may overrun a little.
    assert wall <= TIMEOUT + GRACE + SLACK
    assert result.elapsed_s <= wall + 0.01
    assert _sha256(db) == before_sha
    assert sorted(os.listdir(db.parent)) == before_files
    assert not outside.exists()


def test_hostile_statements_in_pool_fail_within_limit_and_leave_file_intact(db, pool):
    outside = db.parent.parent / "outside.sqlite"
    before_sha, before_files = _sha256(db), sorted(os.listdir(db.parent))
    statements = HOSTILE + POOL_ONLY + STUCK
    restarts = pool.restarts
    started = time.monotonic()
    results = pool.run([(db, s.format(outside=outside)) for s, _ in statements], timeout_s=TIMEOUT,
                       row_cap=ROW_CAP)
    wall = time.monotonic() - started
    for (sql, kinds), result in zip(statements, results, strict=True):
        assert result.error_kind in kinds, (sql, result.error)
        assert result.elapsed_s <= TIMEOUT + GRACE + SLACK, (sql, result.elapsed_s)
    # The stuck statements were stopped by killing their workers, not by waiting for them.
    assert pool.restarts >= restarts + len(STUCK)
    assert wall < 15
    assert _sha256(db) == before_sha
    assert sorted(os.listdir(db.parent)) == before_files
    assert not outside.exists()
    # ... and the pool still answers.
    ok = pool.run([(db, "SELECT count(*) FROM singer")])[0]
    assert ok.ok and ok.rows == _plain(db, "SELECT count(*) FROM singer")[1]


# -------------------------------------------------------------------------------------- normal queries

def test_gold_queries_match_plain_sqlite(shared_dir):
    jobs = _gold(shared_dir, {"concert_singer", "pets_1"})
    for path, sql in jobs:
        result = execute(path, sql)
        assert result.ok, (sql, result.error)
        assert (result.columns, result.rows) == _plain(path, sql), sql
        assert isinstance(result.rows, tuple) and all(isinstance(r, tuple) for r in result.rows)


@pytest.mark.parametrize(("sql", "kind", "message"), [
    ("SELEC Name FROM singer", S, "syntax error"),
    ("SELECT Name FROM singer WHERE", S, "incomplete input"),
    ("SELECT nope FROM singer", S, "no such column"),
    ("SELECT * FROM nope", S, "no such table"),
    ("SELECT Singer_ID FROM singer, singer_in_concert", S, "ambiguous column"),
    ("SELECT abs(-9223372036854775807 - 1)", R, "integer overflow"),
    ("", S, "empty"),
    ("  ;  ", S, "empty"),
    ("-- only a comment", S, "no result set"),
])
def test_error_kinds(db, sql, kind, message):
    result = execute(db, sql)
    assert result.error_kind is kind
    assert message in result.error
    assert not result.ok


@pytest.mark.parametrize("sql", ["SELECT count(*) FROM singer;", "SELECT count(*) FROM singer ; ;\n",
                                 "SELECT count(*) FROM singer; -- done", "SELECT count(*) /* ; */ FROM singer;"])
def test_trailing_semicolons_and_comments_are_one_statement(db, sql):
    result = execute(db, sql)
    assert result.ok, result.error
    assert result.rows == _plain(db, "SELECT count(*) FROM singer")[1]


def test_introspection_pragmas_are_allowed(db):
    result = execute(db, "PRAGMA table_info(singer)")
    assert result.ok, result.error
    assert result.rows == _plain(db, "PRAGMA table_info(singer)")[1]
    assert execute(db, "PRAGMA user_version").ok


def test_row_cap_boundary(db):
    n = len(_plain(db, "SELECT * FROM singer")[1])
    assert execute(db, "SELECT * FROM singer", row_cap=n).ok
    over = execute(db, "SELECT * FROM singer", row_cap=n - 1)
    assert over.error_kind is L and str(n - 1) in over.error


def test_result_byte_budget(db):
    """Few rows, each huge: the byte budget stops the result long before the row cap would."""
    result = execute(db, f"{ENDLESS} SELECT zeroblob(1000000) FROM c", timeout_s=30)
    assert result.error_kind is L and "MiB" in result.error


def test_timeout_stops_long_query_close_to_its_limit(db):
    result = execute(db, f"{ENDLESS} SELECT count(*) FROM c", timeout_s=0.2)
    assert result.error_kind is T
    assert 0.2 <= result.elapsed_s <= 0.2 + SLACK


def test_invalid_utf8_text_is_decoded_not_fatal(tmp_path):
    path = tmp_path / "bad_utf8.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (name TEXT)")
    conn.execute("INSERT INTO t VALUES (CAST(x'4dff61' AS TEXT))")  # 'M', an invalid byte, 'a'
    conn.commit()
    conn.close()
    plain = sqlite3.connect(path)
    with pytest.raises(sqlite3.OperationalError):  # what a default connection does with these bytes
        plain.execute("SELECT name FROM t").fetchall()
    plain.close()
    result = execute(path, "SELECT name FROM t")
    assert result.ok and result.rows == (("Ma",),)


def test_missing_or_non_sqlite_database_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="not found") as missing:
        execute(tmp_path / "nope.sqlite", "SELECT 1")
    assert "nope.sqlite" in str(missing.value)
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database at all")
    with pytest.raises(BadInput, match="not a SQLite database"):
        execute(text, "SELECT 1")
    with pytest.raises(BadInput, match="directory"):
        execute(tmp_path, "SELECT 1")


def test_bad_limits_are_bad_input(db):
    with pytest.raises(BadInput, match="timeout"):
        execute(db, "SELECT 1", timeout_s=0)
    with pytest.raises(BadInput, match="row cap"):
        execute(db, "SELECT 1", row_cap=-1)


def test_replaced_database_file_is_reopened(tmp_path):
    path = tmp_path / "x.sqlite"

    def make(value: int) -> None:
        tmp = tmp_path / "tmp.sqlite"
        conn = sqlite3.connect(tmp)
        conn.execute("CREATE TABLE t (v INT)")
        conn.execute("INSERT INTO t VALUES (?)", (value,))
        conn.commit()
        conn.close()
        os.replace(tmp, path)

    make(1)
    assert execute(path, "SELECT v FROM t").rows == ((1,),)
    make(2)  # same path, new file: the cached immutable connection must not serve stale pages
    assert execute(path, "SELECT v FROM t").rows == ((2,),)


def test_result_pickles_and_ok(db):
    good = execute(db, "SELECT Name FROM singer ORDER BY Name LIMIT 2")
    bad = execute(db, "DROP TABLE singer")
    for result in (good, bad):
        copy = pickle.loads(pickle.dumps(result))
        assert copy == result and isinstance(copy, SQLResult)
    assert good.ok and not bad.ok and bad.error_kind is D
    assert isinstance(pickle.loads(pickle.dumps(bad)).error_kind, ErrorKind)


def test_execute_from_several_threads(db):
    expected = _plain(db, "SELECT Name FROM singer ORDER BY Age")[1]
    results: list[SQLResult] = []

    def work() -> None:
        results.extend(execute(db, "SELECT Name FROM singer ORDER BY Age") for _ in range(20))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 60 and all(r.rows == expected for r in results)


# ---------------------------------------------------------------------------------------------- pool

def test_pool_preserves_order_across_databases(shared_dir, pool):
    jobs = _gold(shared_dir, {"concert_singer", "pets_1", "car_1", "orchestra"})
    jobs = jobs[::2] + jobs[1::2]  # interleave databases
    results = pool.run(jobs)
    assert len(results) == len(jobs)
    assert len(pool.worker_pids) == 2
    for (path, sql), result in zip(jobs, results, strict=True):
        plain = execute(path, sql)
        assert (result.rows, result.columns, result.error_kind) == (plain.rows, plain.columns, plain.error_kind)


def test_pool_timeout_job_mixed_in(db, pool):
    jobs = [(db, "SELECT Name FROM singer ORDER BY Age")] * 30
    jobs[7] = (db, f"{ENDLESS} SELECT count(*) FROM c")
    started = time.monotonic()
    results = pool.run(jobs, timeout_s=TIMEOUT)
    assert time.monotonic() - started < TIMEOUT + GRACE + SLACK
    assert results[7].error_kind is T
    expected = _plain(db, "SELECT Name FROM singer ORDER BY Age")[1]
    assert all(r.ok and r.rows == expected for i, r in enumerate(results) if i != 7)


def test_pool_survives_a_killed_worker(db):
    n = 500_000
    sql = f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT {n}) SELECT sum(x) FROM c"
    with SandboxPool(processes=2) as p:
        p.run([(db, "SELECT 1")] * 2)  # both workers up
        victim = p.worker_pids[0]
        killer = threading.Timer(0.2, os.kill, (victim, signal.SIGKILL))
        killer.start()
        try:
            results = p.run([(db, sql)] * 6, timeout_s=10)
        finally:
            killer.cancel()
        assert victim not in p.worker_pids and p.restarts >= 1
        assert all(r.ok and r.rows == ((n * (n + 1) // 2,),) for r in results)
        # A worker that died while idle is noticed on the next dispatch.
        os.kill(p.worker_pids[1], signal.SIGKILL)
        time.sleep(0.05)
        again = p.run([(db, "SELECT count(*) FROM singer")] * 4)
        assert all(r.ok for r in again)


def test_pool_memory_limit_turns_runaway_into_error(db):
    runaway = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 5000000) "
               "SELECT count(*) FROM (SELECT DISTINCT x FROM c)")
    with SandboxPool(processes=1, memory_limit_mb=16) as p:
        oom, after = p.run([(db, runaway), (db, "SELECT count(*) FROM singer")], timeout_s=10)
    assert oom.error_kind is R and "out of memory" in oom.error
    assert after.ok


def test_pool_bad_database_names_the_record(db, tmp_path, pool):
    with pytest.raises(BadInput, match="not found") as info:
        pool.run([(db, "SELECT 1"), (tmp_path / "missing.sqlite", "SELECT 1")])
    assert info.value.record == 1
    assert pool.run([]) == []


def test_pool_progress_bar_and_close(db, capsys):
    p = SandboxPool(processes=1)
    results = p.run([(db, "SELECT 1")] * 3, progress="gold")
    assert [r.rows for r in results] == [((1,),)] * 3
    assert "gold" in capsys.readouterr().err
    pid = p.worker_pids[0]
    p.close()
    p.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(RuntimeError, match="closed"):
        p.run([(db, "SELECT 1")])


def test_pool_that_cannot_start_workers_raises_instead_of_hanging(db, monkeypatch):
    from text2sql_core.sql import sandbox

    monkeypatch.setattr(sandbox, "_WORKER_CODE", "raise SystemExit(3)")
    with SandboxPool(processes=1) as p, pytest.raises(Retryable, match="fail to start"):
        p.run([(db, "SELECT 1")])
