"""``t2s sql --db FILE.sqlite [--timeout S] [--row-cap N] [--json] "SQL"``: one query through the sandbox.

The same sandbox that scores predictions (read-only, one statement, timeout, row cap), so a user can see
exactly what the evaluator sees for a query: its rows, or the error kind that made it fail.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from ..errors import EXIT_BAD_INPUT, EXIT_OK, BadInput

_MAX_CELL = 60  # characters per cell in the table view; --json prints values whole
_MAX_TIMEOUT_S = 86400.0  # a day; larger values overflow the OS's timers


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        text = f"x'{value.hex()}'"
    else:
        text = str(value)
    text = text.replace("\n", "\\n").replace("\t", "\\t")
    return text if len(text) <= _MAX_CELL else text[:_MAX_CELL - 1] + "…"


def format_table(columns: tuple[str, ...], rows: tuple[tuple, ...]) -> str:
    """Rows as an aligned text table with a header rule, numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(_cell(c))] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(isinstance(r[i], int | float) or r[i] is None for r in rows)
               for i in range(len(columns))]

    def line(values: list[str]) -> str:
        return " | ".join(v.rjust(w) if num else v.ljust(w)
                          for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    out = [line([_cell(c) for c in columns]), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _json_value(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()  # BLOBs as hex: JSON has no bytes
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # SQLite can produce +-Inf; bare Infinity is not valid JSON
    return value


def handler(args: argparse.Namespace) -> int:
    """Run the query; every error is one line on stderr and exit 2 (no log line beside it, as the README says)."""
    try:
        return _query(args)
    except BadInput as exc:
        print(f"t2s: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _query(args: argparse.Namespace) -> int:
    from ..sql.sandbox import SandboxPool, resolve_db

    if not (math.isfinite(args.timeout) and 0 < args.timeout <= _MAX_TIMEOUT_S):
        raise BadInput(f"--timeout must be a number of seconds in (0, {_MAX_TIMEOUT_S:g}], got {args.timeout}",
                       field="--timeout")
    if args.row_cap < 0:
        raise BadInput(f"--row-cap must be >= 0, got {args.row_cap}", field="--row-cap")
    db = resolve_db(args.db)
    # A one-worker pool rather than execute(): its watchdog enforces --timeout even when SQLite is stuck
    # in one C-level step, and the worker's heap limit holds.
    with SandboxPool(processes=1) as pool:
        (result,) = pool.run([(db, args.sql)], timeout_s=args.timeout, row_cap=args.row_cap)
    if not result.ok:
        # One line, as the README promises: the SQL's problem is the answer, not a failure to log.
        print(f"t2s: error: {args.db}: SQL {result.error_kind.value} error: {result.error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        doc = {"columns": list(result.columns), "rows": [[_json_value(v) for v in row] for row in result.rows],
               "row_count": len(result.rows), "elapsed_s": round(result.elapsed_s, 6)}
        sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
    else:
        n = len(result.rows)
        sys.stdout.write(format_table(result.columns, result.rows) + "\n")
        sys.stdout.write(f"({n} row{'' if n == 1 else 's'}, {result.elapsed_s:.3f} s)\n")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sql", help="run one read-only SQL query on a SQLite file in the evaluation sandbox",
        description="Run one SQL query on a SQLite database the way evaluation and reward run predictions: "
                    "opened read-only and immutable, one statement only, writes / ATTACH / PRAGMA writes / "
                    "extension loading denied, a wall-clock timeout and a row cap. Prints the rows (exit 0) "
                    "or one line naming the error kind: syntax, denied, timeout, runtime, row_limit (exit 2).")
    p.add_argument("--db", required=True, metavar="FILE.sqlite", help="SQLite database file (never modified)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="wall-clock limit for the query in seconds (default: %(default)s)")
    p.add_argument("--row-cap", type=int, default=100_000, metavar="N",
                   help="fail with row_limit when the result has more than N rows (default: %(default)s)")
    p.add_argument("--json", action="store_true",
                   help="print {columns, rows, row_count, elapsed_s} as JSON (BLOBs as hex) instead of a table")
    p.add_argument("sql", metavar="SQL", help="the query, e.g. \"SELECT name FROM singer\"")
    p.set_defaults(func=handler)
