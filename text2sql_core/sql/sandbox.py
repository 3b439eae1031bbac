"""Run untrusted SQL (model predictions, gold queries) against Spider-style SQLite files, safely and fast.

Evaluation, reward and pair mining all execute SQL the model wrote, so every query goes through here:

- the database is opened read-only *and* immutable (``file:...?mode=ro&immutable=1``): SQLite takes no
  locks and never creates ``-journal``/``-wal``/``-shm`` files, so the file stays byte-identical;
- ``PRAGMA query_only=1``, ``SQLITE_LIMIT_ATTACHED=0`` and extension loading off, then an authorizer that
  allows reads only (SELECT, column reads, functions other than a short deny-list, recursive CTEs and a
  few introspection pragmas) and denies everything else (writes, DDL, ATTACH, transactions, pragma writes);
- exactly one statement per call (a trailing ``;`` and comments are fine);
- a wall-clock deadline checked by SQLite's progress handler (cheap, in-process), and in the pool a
  watchdog that kills a worker stuck in one long C-level step (which the progress handler cannot
  interrupt) and replaces it;
- a row cap (fetching stops at ``row_cap + 1`` rows), a 1 MiB limit per string or blob, a 128 MiB budget
  for a result's Python size (every value counted, numbers too, checked per row before the row is kept)
  and, in pool workers, a 256 MiB SQLite heap limit and an address-space cap (``RLIMIT_AS``) over both,
  so a runaway cartesian product cannot eat the machine: a worker's peak RSS stays under 512 MiB;
- TEXT holding invalid UTF-8 (some Spider databases do) is decoded with bad bytes dropped, as the
  official Spider evaluator does, instead of failing.

:func:`execute` runs in the calling process (no watchdog, no heap limit: for trusted or interactive SQL);
:class:`SandboxPool` is the hardened path for model output at scale.

Every SQL problem comes back as an :class:`SQLResult` with an :class:`ErrorKind`, never as an exception.
Error kinds:

- ``syntax``: the statement does not compile: parse errors *and* name-resolution errors found while
  preparing ("no such table/column/function", "ambiguous column name", a misused aggregate...). Told apart
  from runtime errors by whether SQLite started executing the statement (trace callback), not by message.
- ``denied``: the authorizer refused something, or the text holds more than one statement.
- ``timeout``: the deadline passed (progress handler), or the pool's watchdog killed a stuck worker.
- ``runtime``: the statement started and failed (integer overflow, string too big, out of memory...).
- ``row_limit``: the result has more than ``row_cap`` rows, or more text and blob bytes than the budget.

A missing file or a file that is not a SQLite database is not a SQL problem: that raises
:class:`~text2sql_core.errors.BadInput` naming the file.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from multiprocessing.connection import wait
from pathlib import Path
from typing import Self

from ..errors import BadInput, Retryable

__all__ = [
    "DEFAULT_ROW_CAP",
    "DEFAULT_TIMEOUT_S",
    "ErrorKind",
    "SQLResult",
    "SandboxPool",
    "execute",
    "resolve_db",
]

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_ROW_CAP = 100_000

# SQLite calls the progress handler every this many VM instructions: a few microseconds apart, so the
# deadline is met within milliseconds while the Python callback costs ~1-3% of execution time.
_PROGRESS_EVERY = 1000
# Largest string or blob a query may build (SQLITE_LIMIT_LENGTH); Spider values are a few bytes long.
_MAX_VALUE_BYTES = 1024 * 1024
# Text and blob bytes a result may hold in Python: `SELECT zeroblob(1e6) FROM <endless CTE>` makes a
# gigabyte a second, which the row cap alone would not stop in time.
_MAX_RESULT_BYTES = 128 * 1024 * 1024
_MAX_SQL_BYTES = 1024 * 1024
_SQLITE_HEADER = b"SQLite format 3\x00"
_SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_temp_master", "sqlite_schema", "sqlite_temp_schema"})

# Functions a query may not call even though reads are allowed: extension loading and the sqlite3 shell's
# file I/O helpers (absent from Python's build today, denied in case a build adds them), and
# fts3_tokenizer, whose two-argument form takes a raw C pointer.
_DENIED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"})
# Pragmas that only describe the schema. Their argument is a table or index name, never a setting.
_PRAGMAS_WITH_NAME = frozenset({"table_info", "table_xinfo", "table_list", "index_list", "index_info",
                                "index_xinfo", "foreign_key_list"})
# Pragmas allowed only as bare reads (``PRAGMA user_version``); with an argument they would write.
_PRAGMAS_READ_ONLY = frozenset({"user_version", "schema_version", "application_id", "encoding",
                                "page_size", "page_count", "collation_list", "function_list",
                                "module_list", "pragma_list"})

_ACTION_NAMES = {getattr(sqlite3, n): n.removeprefix("SQLITE_") for n in (
    "SQLITE_CREATE_INDEX", "SQLITE_CREATE_TABLE", "SQLITE_CREATE_TEMP_INDEX", "SQLITE_CREATE_TEMP_TABLE",
    "SQLITE_CREATE_TEMP_TRIGGER", "SQLITE_CREATE_TEMP_VIEW", "SQLITE_CREATE_TRIGGER", "SQLITE_CREATE_VIEW",
    "SQLITE_DELETE", "SQLITE_DROP_INDEX", "SQLITE_DROP_TABLE", "SQLITE_DROP_TEMP_INDEX",
    "SQLITE_DROP_TEMP_TABLE", "SQLITE_DROP_TEMP_TRIGGER", "SQLITE_DROP_TEMP_VIEW", "SQLITE_DROP_TRIGGER",
    "SQLITE_DROP_VIEW", "SQLITE_INSERT", "SQLITE_PRAGMA", "SQLITE_READ", "SQLITE_SELECT",
    "SQLITE_TRANSACTION", "SQLITE_UPDATE", "SQLITE_ATTACH", "SQLITE_DETACH", "SQLITE_ALTER_TABLE",
    "SQLITE_REINDEX", "SQLITE_ANALYZE", "SQLITE_CREATE_VTABLE", "SQLITE_DROP_VTABLE", "SQLITE_FUNCTION",
    "SQLITE_SAVEPOINT", "SQLITE_RECURSIVE") if hasattr(sqlite3, n)}


class ErrorKind(str, Enum):
    """Why a query produced no rows; the evaluator counts every kind as a failed execution."""

    SYNTAX = "syntax"
    DENIED = "denied"
    TIMEOUT = "timeout"
    RUNTIME = "runtime"
    ROW_LIMIT = "row_limit"


@dataclass(frozen=True, slots=True)
class SQLResult:
    """The outcome of one query: rows and column names, or an error kind and message. Picklable."""

    rows: tuple[tuple, ...] | None
    columns: tuple[str, ...] | None
    error_kind: ErrorKind | None
    error: str | None
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    def __reduce__(self):
        # Plain tuple state: the pool ships thousands of these through pipes; this keeps pickles small.
        kind = None if self.error_kind is None else self.error_kind.value
        return (_rebuild_result, (self.rows, self.columns, kind, self.error, self.elapsed_s))


def _rebuild_result(rows, columns, kind, error, elapsed_s) -> SQLResult:
    return SQLResult(rows, columns, None if kind is None else ErrorKind(kind), error, elapsed_s)


def _failure(kind: ErrorKind, message: str, started: float) -> SQLResult:
    return SQLResult(None, None, kind, message, time.perf_counter() - started)


def _decode_text(raw: bytes) -> str:
    """TEXT values: some Spider databases hold invalid UTF-8; drop bad bytes as the official evaluator does."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="ignore")


def resolve_db(db_path: str | Path) -> str:
    """The absolute path of a SQLite file, or BadInput naming it when it is missing or not SQLite."""
    path = Path(db_path)
    try:
        with path.open("rb") as fh:
            header = fh.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        raise BadInput("database file not found", uri=str(db_path)) from None
    except IsADirectoryError:
        raise BadInput("database path is a directory, expected a .sqlite file", uri=str(db_path)) from None
    except OSError as exc:
        raise BadInput(f"cannot read database file: {exc.strerror or exc}", uri=str(db_path)) from None
    if header != _SQLITE_HEADER:
        raise BadInput("not a SQLite database (bad file header)", uri=str(db_path))
    return str(path.resolve())


class _Guard:
    """Per-thread state shared by the authorizer, progress handler and trace callback of its connections."""

    __slots__ = ("deadline", "denied", "selecting", "started", "timed_out")

    def __init__(self) -> None:
        self.deadline = 0.0
        self.timed_out = False
        self.denied: str | None = None
        self.started = False
        self.selecting = False

    def reset(self, deadline: float) -> None:
        self.deadline = deadline
        self.timed_out = False
        self.denied = None
        self.started = False
        self.selecting = False

    def progress(self) -> int:
        if time.monotonic() > self.deadline:
            self.timed_out = True
            return 1
        return 0

    def trace(self, _statement: str) -> None:
        # SQLite traces a statement when it starts running: an error before that is a compile error.
        self.started = True

    def authorize(self, action: int, arg1, arg2, _db, _trigger) -> int:
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE):
            if action == sqlite3.SQLITE_SELECT:
                self.selecting = True
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION:
            if (arg2 or "").lower() not in _DENIED_FUNCTIONS:
                return sqlite3.SQLITE_OK
            reason = f"function {arg2}() is not allowed"
        elif action == sqlite3.SQLITE_PRAGMA:
            name = (arg1 or "").lower()
            if name in _PRAGMAS_WITH_NAME or (name in _PRAGMAS_READ_ONLY and arg2 is None):
                return sqlite3.SQLITE_OK
            reason = f"PRAGMA {arg1}{'' if arg2 is None else f'={arg2}'} is not allowed (read-only sandbox)"
        elif action == sqlite3.SQLITE_UPDATE and arg1 in _SCHEMA_TABLES and self.selecting:
            # A table-valued function (json_each, pragma_table_info) registers its eponymous virtual table
            # with UPDATE checks on the schema table inside a SELECT; nothing is written (immutable,
            # query_only), and real schema changes are refused by their own actions (CREATE, DROP, ALTER).
            return sqlite3.SQLITE_OK
        else:
            what = _ACTION_NAMES.get(action, f"action {action}")
            if arg1 in _SCHEMA_TABLES:
                # CREATE/DROP/ALTER first ask to write sqlite_master; say what that usually means.
                reason = f"{what} on {arg1} (a schema change: CREATE, DROP, ALTER...) is not allowed"
            else:
                target = f" {arg1}" if isinstance(arg1, str) and arg1 else ""
                reason = f"{what}{target} is not allowed (read-only sandbox)"
        if self.denied is None:
            self.denied = reason
        return sqlite3.SQLITE_DENY


class _Connections:
    """An LRU of open read-only connections, one set per thread (sqlite3 connections are per-thread)."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self.guard = _Guard()
        self._open: OrderedDict[str, tuple[tuple[int, int, int], sqlite3.Connection]] = OrderedDict()

    def get(self, db: str) -> sqlite3.Connection:
        st = os.stat(db)
        # immutable=1 tells SQLite the file never changes; if it is replaced on disk, reopen it.
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        hit = self._open.get(db)
        if hit is not None and hit[0] == stamp:
            self._open.move_to_end(db)
            return hit[1]
        if hit is not None:
            self.drop(db)
        conn = self._connect(db)
        self._open[db] = (stamp, conn)
        while len(self._open) > self.capacity:
            _, (_, old) = self._open.popitem(last=False)
            old.close()
        return conn

    def drop(self, db: str) -> None:
        hit = self._open.pop(db, None)
        if hit is not None:
            hit[1].close()

    def close(self) -> None:
        while self._open:
            _, (_, conn) = self._open.popitem()
            conn.close()

    def _connect(self, db: str) -> sqlite3.Connection:
        uri = Path(db).as_uri() + "?mode=ro&immutable=1"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, cached_statements=256)
        try:
            if hasattr(conn, "enable_load_extension"):
                conn.enable_load_extension(False)
            # Settings first: once the authorizer is installed these pragmas would be denied.
            conn.execute("PRAGMA query_only=1")
            conn.execute("PRAGMA temp_store=MEMORY")  # sorts of a runaway join never spill to disk
            conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, _MAX_VALUE_BYTES)
            conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, _MAX_SQL_BYTES)
            conn.setlimit(sqlite3.SQLITE_LIMIT_WORKER_THREADS, 0)
            guard = self.guard
            conn.set_authorizer(guard.authorize)
            conn.set_progress_handler(guard.progress, _PROGRESS_EVERY)
            conn.set_trace_callback(guard.trace)
        except BaseException:
            conn.close()
            raise
        return conn


_local = threading.local()


def _thread_connections() -> _Connections:
    conns = getattr(_local, "connections", None)
    if conns is None:
        conns = _local.connections = _Connections()
    return conns


def _strip_trailing(sql: str) -> str:
    """Drop trailing whitespace and semicolons: ``SELECT 1; ;`` is still one statement."""
    text = sql.rstrip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    return text


def _row_bytes(row: tuple, _sizeof=sys.getsizeof) -> int:
    """What a fetched row costs in Python memory: the tuple and every value (ints and floats included)."""
    return _sizeof(row) + sum(map(_sizeof, row))


def _fetch(conn: sqlite3.Connection, text: str, row_cap: int) -> tuple[tuple[str, ...], list[tuple]] | str:
    """Rows and column names, or the reason the result is refused (row cap, memory budget). Raises sqlite errors.

    Each row's Python size is counted as it is fetched and checked before the row is kept, so the
    budget holds for every result type: 2000 numeric columns cost as much as their text would.
    """
    cursor = conn.execute(text)
    try:
        if cursor.description is None:
            # Comments only, or a statement without a result (every such statement is denied today).
            return "statement returns no result set (expected a query)"
        columns = tuple(d[0] for d in cursor.description)
        rows: list[tuple] = []
        size = 0
        for row in cursor:
            size += _row_bytes(row)
            if size > _MAX_RESULT_BYTES:
                return (f"result needs more than {_MAX_RESULT_BYTES // 2**20} MiB of memory "
                        f"(at row {len(rows) + 1}, {len(columns)} columns)")
            if len(rows) == row_cap:
                return f"result has more than {row_cap} rows (row cap)"
            rows.append(row)
        return columns, rows
    finally:
        cursor.close()


def _run(conns: _Connections, db: str, sql: str, timeout_s: float, row_cap: int) -> SQLResult:
    """Execute one statement on a resolved database path; SQL problems become typed results."""
    started = time.perf_counter()
    text = _strip_trailing(sql)
    if not text:
        return _failure(ErrorKind.SYNTAX, "empty SQL statement", started)
    try:
        conn = conns.get(db)
    except (OSError, sqlite3.Error) as exc:
        return _failure(ErrorKind.RUNTIME, f"cannot open database {db}: {exc}", started)
    guard = conns.guard
    deadline = time.monotonic() + timeout_s
    guard.reset(deadline)
    try:
        try:
            fetched = _fetch(conn, text, row_cap)
        except sqlite3.OperationalError as exc:
            if "Could not decode to UTF-8" not in str(exc):
                raise
            # Rare: invalid UTF-8 in a TEXT value. Rerun with the tolerant decoder, within the same deadline;
            # the C decoder stays the default because a Python call per text cell costs ~30% on big results.
            guard.reset(deadline)
            conn.text_factory = _decode_text
            try:
                fetched = _fetch(conn, text, row_cap)
            finally:
                conn.text_factory = str
        if isinstance(fetched, str):
            if fetched.startswith("statement returns") and guard.started:
                # it ran (REINDEX, ANALYZE without a name...): a statement, just not a query
                return _failure(ErrorKind.DENIED, "not authorized: only queries are allowed (the statement "
                                "returns no rows)", started)
            kind = ErrorKind.SYNTAX if fetched.startswith("statement returns") else ErrorKind.ROW_LIMIT
            return _failure(kind, fetched, started)
        columns, rows = fetched
        return SQLResult(tuple(rows), columns, None, None, time.perf_counter() - started)
    except (sqlite3.Error, sqlite3.Warning) as exc:
        message = str(exc)
        if guard.denied is not None:
            return _failure(ErrorKind.DENIED, f"not authorized: {guard.denied}", started)
        if guard.timed_out:
            return _failure(ErrorKind.TIMEOUT, f"query exceeded the {timeout_s:g}s timeout", started)
        if "one statement at a time" in message:
            return _failure(ErrorKind.DENIED, "only one SQL statement is allowed per query", started)
        suspect = "out of memory" in message or (
            isinstance(exc, sqlite3.DatabaseError)
            and not isinstance(exc, sqlite3.OperationalError | sqlite3.ProgrammingError))
        if suspect:  # after OOM or a corrupt-file error, reopen the connection next time
            conns.drop(db)
        if isinstance(exc, sqlite3.ProgrammingError) or not guard.started:
            return _failure(ErrorKind.SYNTAX, message, started)
        return _failure(ErrorKind.RUNTIME, message, started)
    except MemoryError:  # SQLITE_NOMEM (the pool's heap limit) surfaces as MemoryError
        conns.drop(db)
        return _failure(ErrorKind.RUNTIME, "out of memory (the sandbox heap limit was reached)", started)
    except (ValueError, OverflowError) as exc:  # value conversion problems
        return _failure(ErrorKind.RUNTIME, f"{type(exc).__name__}: {exc}", started)


def _check_limits(timeout_s: float, row_cap: int) -> None:
    if not timeout_s > 0:
        raise BadInput(f"timeout must be > 0 seconds, got {timeout_s}", field="timeout_s")
    if row_cap < 0:
        raise BadInput(f"row cap must be >= 0, got {row_cap}", field="row_cap")


def execute(db_path: str | Path, sql: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
            row_cap: int = DEFAULT_ROW_CAP) -> SQLResult:
    """Run one read-only statement in this process (connections cached per thread).

    Never raises for SQL problems. For trusted or interactive SQL: the deadline relies on SQLite's
    progress handler alone, so one C-level step that never yields (``instr`` on megabyte strings, a huge
    sort) can overrun it, and SQLite's memory is not capped (the heap limit is process-wide, so only
    pool workers set it). Model output goes through :class:`SandboxPool`, which adds both.
    """
    _check_limits(timeout_s, row_cap)
    if not isinstance(sql, str):
        raise BadInput(f"SQL must be a string, got {type(sql).__name__}")
    return _run(_thread_connections(), resolve_db(db_path), sql, timeout_s, row_cap)


# --------------------------------------------------------------------------------------------- pool

# Workers are fresh interpreters started with subprocess, not multiprocessing: no fork of a caller that
# may run torch threads (a forked threaded process can deadlock), and no re-import of the caller's
# __main__ (which multiprocessing's spawn/forkserver do).
_WORKER_CODE = "from text2sql_core.sql.sandbox import _worker_entry; _worker_entry()"
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def _worker_entry() -> None:
    """``python -c`` entry of a pool worker; argv: socket fd, parent pid, heap limit MiB, cache size."""
    from multiprocessing.connection import Connection

    fd, parent_pid, memory_limit_mb, cache_size = (int(a) for a in sys.argv[1:5])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business; it stops us
    if sys.platform.startswith("linux"):
        # Die with the parent even while stuck in C (where a closed pipe goes unnoticed). Linux sends it
        # when the spawning *thread* ends; the pool then replaces the worker like any dead one.
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:
        return
    _worker_loop(Connection(fd), memory_limit_mb, cache_size)


def _cap_address_space(memory_limit_mb: int) -> None:
    """Bound the whole worker, Python objects included: what SQLite's heap limit cannot see.

    The cap is the address space in use now plus the SQLite heap, twice the result budget (the rows
    and their pickle) and some slack; past it, allocations fail with ``MemoryError`` (a ``runtime``
    "out of memory" result) instead of the machine swapping.
    """
    if not sys.platform.startswith("linux"):
        return
    import resource

    with open("/proc/self/statm") as fh:
        in_use = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = in_use + memory_limit_mb * 2**20 + 2 * _MAX_RESULT_BYTES + 64 * 2**20
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft == resource.RLIM_INFINITY or soft > cap:
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _worker_loop(conn, memory_limit_mb: int, cache_size: int) -> None:
    """Run chunks of jobs, sending one result per job as soon as it is done, until told to stop."""
    if memory_limit_mb > 0:
        # Process-wide SQLite heap limit: a runaway sort or group-by fails with "out of memory".
        limiter = sqlite3.connect(":memory:")
        limiter.execute(f"PRAGMA hard_heap_limit={memory_limit_mb * 1024 * 1024}")
        limiter.close()
        _cap_address_space(memory_limit_mb)
    conns = _Connections(cache_size)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if message is None:
            conns.close()
            return
        timeout_s, row_cap, jobs = message
        for index, db, sql in jobs:
            try:
                result = _run(conns, db, sql, timeout_s, row_cap)
            except Exception as exc:  # noqa: BLE001 - a bug here must not kill the worker and its chunk
                result = SQLResult(None, None, ErrorKind.RUNTIME, f"sandbox error: {type(exc).__name__}: {exc}",
                                   0.0)
            try:
                conn.send((index, result))
            except MemoryError:  # the pickle of a result near the budget did not fit under the cap
                conn.send((index, SQLResult(None, None, ErrorKind.ROW_LIMIT,
                                            "result too large to return within the worker's memory cap", 0.0)))


class _Worker:
    __slots__ = ("chunk", "conn", "job_started", "popen", "ready", "spawned")

    def __init__(self, popen: subprocess.Popen, conn) -> None:
        self.popen = popen
        self.conn = conn
        self.ready = False
        self.chunk: deque[int] = deque()  # job indices sent and not answered yet, in order
        self.job_started = 0.0            # when chunk[0] started: its dispatch or the previous answer
        self.spawned = time.monotonic()


class SandboxPool:
    """Persistent worker processes that run many queries with the sandbox, in order, never hanging.

    Jobs go out in chunks (one pipe message per chunk, one small message back per result). Each worker
    keeps its read-only connections open across jobs and calls. A worker that overruns a job's timeout
    by ``grace_s`` (stuck in C where the progress handler cannot reach) is killed and replaced, and that
    job returns TIMEOUT; a worker that dies (killed, crashed) is replaced and its job is retried once.
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, processes: int | None = None, *, grace_s: float = 1.0,
                 memory_limit_mb: int | None = 256, connection_cache: int = 64,
                 startup_timeout_s: float = 60.0) -> None:
        self.processes = max(1, processes or os.cpu_count() or 1)
        self.grace_s = grace_s
        self.memory_limit_mb = memory_limit_mb or 0
        self.connection_cache = connection_cache
        self.startup_timeout_s = startup_timeout_s
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self.restarts = 0  # workers replaced after a kill or crash, for logs and tests

    # ----- lifecycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> None:
        """Start the workers (run() does it too); they get ready in the background."""
        if self._closed:
            raise RuntimeError("SandboxPool is closed")
        while len(self._workers) < self.processes:
            self._workers.append(self._spawn())

    def close(self) -> None:
        """Stop every worker (politely, then by force). Safe to call twice.

        A pool dropped without close() still ends: its workers exit when their pipe closes.
        """
        self._closed = True
        workers, self._workers = self._workers, []
        for w in workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 1.0
        for w in workers:
            try:
                w.popen.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.popen.kill()
                w.popen.wait()
            w.conn.close()

    @property
    def worker_pids(self) -> list[int]:
        return [w.popen.pid for w in self._workers]

    def _spawn(self) -> _Worker:
        parent, child = multiprocessing.Pipe(duplex=True)
        env = dict(os.environ)
        # The parent may import this package from a source tree that is not installed: show it to the child.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        fd = child.fileno()
        argv = [sys.executable, "-c", _WORKER_CODE, str(fd), str(os.getpid()), str(self.memory_limit_mb),
                str(self.connection_cache)]
        try:
            popen = subprocess.Popen(argv, pass_fds=(fd,), stdin=subprocess.DEVNULL, env=env)
        finally:
            child.close()
        return _Worker(popen, parent)

    @staticmethod
    def _discard(w: _Worker) -> None:
        if w.popen.poll() is None:
            w.popen.kill()
        w.popen.wait()
        w.conn.close()

    # ----- running

    def run(self, jobs: Sequence[tuple[str | Path, str]], *, timeout_s: float = DEFAULT_TIMEOUT_S,
            row_cap: int = DEFAULT_ROW_CAP, progress: bool | str = False) -> list[SQLResult]:
        """Run ``(db_path, sql)`` jobs; results in job order. ``progress``: a tqdm bar (a str is its label).

        Raises BadInput for a missing or non-SQLite database file (checked before anything runs).
        """
        _check_limits(timeout_s, row_cap)
        resolved: dict[str | Path, str] = {}
        dbs: list[str] = []
        sqls: list[str] = []
        for i, (db, sql) in enumerate(jobs):
            if not isinstance(sql, str):
                raise BadInput(f"SQL must be a string, got {type(sql).__name__}", record=i)
            if db not in resolved:
                try:
                    resolved[db] = resolve_db(db)
                except BadInput as exc:
                    raise BadInput(exc.message, uri=exc.uri, record=i) from None
            dbs.append(resolved[db])
            sqls.append(sql)
        if not dbs:
            return []
        self._lock.acquire()  # calls from several threads take turns
        try:
            self.start()
            return self._run(dbs, sqls, timeout_s, row_cap, progress)
        except BaseException:
            # Interrupted mid-run: workers hold unknown jobs; stop them all, start fresh next time.
            for w in self._workers:
                self._discard(w)
            self._workers = []
            raise
        finally:
            self._lock.release()

    def _run(self, dbs: list[str], sqls: list[str], timeout_s: float, row_cap: int,
             progress: bool | str) -> list[SQLResult]:
        n = len(dbs)
        results: list[SQLResult | None] = [None] * n
        # Small enough that both workers stay busy to the end, big enough that pipe round-trips vanish.
        size = max(1, min(32, n // (self.processes * 8)))
        pending: deque[list[int]] = deque(list(range(i, min(i + size, n))) for i in range(0, n, size))
        retried: set[int] = set()
        limit = timeout_s + self.grace_s
        state = {"remaining": n, "startup_failures": 0}
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n, desc=progress if isinstance(progress, str) else "sql", unit="query",
                       file=sys.stderr, leave=False)

        def finish(index: int, result: SQLResult) -> None:
            if results[index] is None:
                results[index] = result
                state["remaining"] -= 1
                if bar is not None:
                    bar.update(1)

        def replace(w: _Worker, why: str) -> None:
            """Take a dead or killed worker out; its unanswered jobs go back to the front of the queue."""
            self._discard(w)
            if w.chunk:
                pending.appendleft(list(w.chunk))
            if not w.ready:
                state["startup_failures"] += 1
                if state["startup_failures"] > 3:
                    raise Retryable(f"SQL sandbox workers fail to start ({why})")
            self._workers[self._workers.index(w)] = self._spawn()
            self.restarts += 1

        def drain(w: _Worker) -> bool:
            """Read whatever the worker sent; False once its pipe is closed (the worker is gone)."""
            try:
                while w.conn.poll():
                    message = w.conn.recv()
                    if message[0] == "ready":
                        w.ready = True
                        continue
                    index, result = message
                    if w.chunk and w.chunk[0] == index:
                        w.chunk.popleft()
                    finish(index, result)
                    w.job_started = time.monotonic()
            except (EOFError, OSError, pickle.UnpicklingError):
                return False
            return True

        try:
            while state["remaining"]:
                now = time.monotonic()
                for w in self._workers:
                    if w.ready and not w.chunk and pending:
                        chunk = pending.popleft()
                        w.chunk = deque(chunk)
                        w.job_started = now
                        try:
                            w.conn.send((timeout_s, row_cap, [(i, dbs[i], sqls[i]) for i in chunk]))
                        except OSError:
                            pass  # it died while idle: its pipe reads EOF below and it is replaced
                # Sleep until a message, a death (its pipe reads EOF) or the next watchdog deadline.
                waits = [w.job_started + limit - now for w in self._workers if w.chunk]
                waits += [w.spawned + self.startup_timeout_s - now for w in self._workers if not w.ready]
                ready = wait([w.conn for w in self._workers], max(0.0, min(waits)) if waits else None)
                for w in list(self._workers):
                    if w.conn in ready and not drain(w):
                        if w.chunk:  # it died running chunk[0]: retry that job once, then give up on it
                            index = w.chunk[0]
                            if index in retried:
                                w.chunk.popleft()
                                finish(index, SQLResult(
                                    None, None, ErrorKind.RUNTIME,
                                    f"sandbox worker died twice running this query (exit code "
                                    f"{w.popen.poll()})", 0.0))
                            retried.add(index)
                        replace(w, f"exit code {w.popen.poll()}")
                now = time.monotonic()
                for w in list(self._workers):
                    if w.chunk and now - w.job_started > limit and drain(w) and w.chunk \
                            and now - w.job_started > limit:
                        index = w.chunk.popleft()
                        finish(index, SQLResult(None, None, ErrorKind.TIMEOUT,
                                                f"query exceeded the {timeout_s:g}s timeout; its stuck worker "
                                                f"was killed", now - w.job_started))
                        replace(w, "killed by watchdog")
                    elif not w.ready and now - w.spawned > self.startup_timeout_s:
                        replace(w, f"not ready after {self.startup_timeout_s:g}s")
        finally:
            if bar is not None:
                bar.close()
        return results  # type: ignore[return-value]
