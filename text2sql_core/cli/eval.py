"""``t2s eval``: Spider EX / EM of a predictions file, example by example, with the official semantics."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import EXIT_OK, BadInput
from ._flags import flag_names

_DESCRIPTION = """\
Score predicted SQL against gold SQL the way the official Spider evaluator (test-suite-sql-eval)
does, example by example: execution accuracy (EX: results compared as bags of rows, order only when
the gold has ORDER BY, columns in any order, every database of a test suite must agree) and exact
set match (EM: clauses compared as sets, values ignored, DISTINCT ignored unless --keep-distinct),
per hardness level (easy / medium / hard / extra).

Writes OUTDIR/per_example.tsv (line db_id hardness ex em error), summary.json, report.md and
scores.png (not with --no-chart), and prints the table. --metric wikisql scores WikiSQL by execution
with its semantics (text case-insensitive, numbers as numbers) and by logical form (em). Predictions that are empty, hold several statements, write, hang
or fail are scored wrong with the reason; database files are opened read-only.
"""

_EPILOG = """\
example:
  t2s eval --gold dev_gold.sql --pred predictions.sql --db database --tables tables.json --out eval/
  t2s eval --metric wikisql --gold dev.jsonl --pred pred.sql --db dev.db --tables dev.tables.jsonl --out eval/
"""


#: the evaluator's keywords, as the flags a user of this command typed
_FLAGS = {"tables": "--tables", "etype": "--etype", "metric": "--metric", "timeout_s": "--timeout",
          "row_cap": "--row-cap", "workers": "--workers", "db_dir": "--db", "gold": "--gold", "pred": "--pred"}


def _run(args: argparse.Namespace) -> int:
    with flag_names(_FLAGS):
        if args.metric == "wikisql":
            return _run_wikisql(args)
        return _run_spider(args)


def _run_wikisql(args: argparse.Namespace) -> int:
    from ..data.wikisql import check_database, read_questions, read_tables
    from ..evaluation.inputs import load_predictions
    from ..evaluation.wikisql import evaluate_wikisql, format_wikisql, write_wikisql_outputs

    if args.tables is None:
        raise BadInput("WikiSQL's questions name their table: give its tables file (dev.tables.jsonl)",
                       field="--tables")
    tables = read_tables(args.tables)
    questions = read_questions(args.gold, tables)
    check_database(args.db, tables, {q.table_id for q in questions})
    predictions = load_predictions(args.pred, expected=len(questions))
    result = evaluate_wikisql(questions, tables, [p.sql for p in predictions], db_path=args.db,
                              gold_path=args.gold, timeout_s=args.timeout, row_cap=args.row_cap,
                              workers=args.workers)
    paths = write_wikisql_outputs(result, args.out)
    print(format_wikisql(result), end="")
    print(f"\n{result.n} examples in {result.seconds:.2f}s; wrote {', '.join(sorted(paths))} to {args.out}")
    return EXIT_OK


def _run_spider(args: argparse.Namespace) -> int:
    from ..evaluation.api import evaluate
    from ..evaluation.inputs import load_gold, load_predictions
    from ..evaluation.report import format_table, write_outputs

    gold = load_gold(args.gold)
    predictions = load_predictions(args.pred, expected=len(gold))
    etype = args.etype or ("exec" if args.metric == "bird" else "all")
    result = evaluate(gold, predictions, db_dir=args.db, tables=args.tables, etype=etype, metric=args.metric,
                      plug_value=args.plug_value, keep_distinct=args.keep_distinct, timeout_s=args.timeout,
                      row_cap=args.row_cap, workers=args.workers,
                      progress=not args.no_progress and sys.stderr.isatty())
    paths = write_outputs(result, args.out, chart=not args.no_chart)
    print(format_table(result), end="")
    print(f"\n{result.n} examples in {result.seconds:.2f}s; wrote {', '.join(sorted(paths))} to {args.out}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="Spider / BIRD / WikiSQL EX and EM of predicted SQL (official semantics)",
                       description=_DESCRIPTION, epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gold", required=True, type=Path, metavar="GOLD",
                   help="gold SQL: `SQL<TAB>db_id` per line (Spider's dev_gold.sql) or a dataset JSON/JSONL; "
                        "with --metric wikisql, WikiSQL's question file (dev.jsonl)")
    p.add_argument("--pred", required=True, type=Path, metavar="PRED",
                   help="predictions: one SQL per line, aligned with GOLD, or the predict stage's JSONL")
    p.add_argument("--db", required=True, type=Path, metavar="DBDIR",
                   help="database directory: DBDIR/<db_id>/*.sqlite (several files = a test suite); with "
                        "--metric wikisql, WikiSQL's SQLite file (dev.db)")
    p.add_argument("--tables", type=Path, metavar="TABLES.json",
                   help="Spider tables.json (foreign keys for EM), required unless --etype exec; WikiSQL's "
                        "dev.tables.jsonl with --metric wikisql")
    p.add_argument("--out", required=True, type=Path, metavar="OUTDIR", help="folder for the outputs")
    p.add_argument("--etype", choices=("all", "exec", "match"),
                   help="what to score: EX (exec), EM (match) or both (all: the default; exec with "
                        "--metric bird)")
    p.add_argument("--metric", choices=("spider", "bird", "wikisql"), default="spider",
                   help="EX semantics: test-suite-sql-eval (spider, default), BIRD's set comparison (bird), or "
                        "WikiSQL's (wikisql: text case-insensitive, numbers as numbers; EM is its logical-form "
                        "accuracy)")
    p.add_argument("--plug-value", action="store_true",
                   help="also try the gold query's values in the prediction's value slots")
    p.add_argument("--keep-distinct", action="store_true",
                   help="do not ignore DISTINCT: queries run as written, and EM tells count(DISTINCT x) from "
                        "count(x) (the official flag changes execution only)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="per-query time limit in seconds; a timeout scores wrong (default: 30)")
    p.add_argument("--row-cap", type=int, default=100_000, metavar="N",
                   help="largest result a query may return; more scores wrong (default: 100000)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="SQL worker processes (default: one per core; 0: run SQL in this process)")
    p.add_argument("--no-chart", action="store_true",
                   help="do not draw scores.png (saves the second matplotlib takes to start)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (shown on a terminal otherwise)")
    p.set_defaults(func=_run)
