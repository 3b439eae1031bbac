"""``t2s prepare``: one dataset file into DB-GPT-Hub SFT records and the flat ``{prompt, output}`` form."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.dataset import DatabaseDir, jsonl_text, prepare_split, write_files_atomically
from ..data.formats import DATASET_FORMATS, DbSchema, Example, read_examples, read_tables
from ..errors import BadInput
from ._flags import flag_names

__all__ = ["register"]


def _flat_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}_flat{out.suffix or '.jsonl'}")


def _read_wikisql(args: argparse.Namespace) -> tuple[list[Example], dict[str, DbSchema]]:
    """WikiSQL's question, tables and database files, checked against each other, as examples and schemas."""
    from ..data import wikisql

    if args.db is None:
        raise BadInput("WikiSQL needs its SQLite file (dev.db) to check the tables the questions use",
                       field="--db")
    if args.db_dir or args.sample_values:
        raise BadInput("not for WikiSQL (its tables live in the one --db file)",
                       field="--db-dir" if args.db_dir else "--sample-values")
    tables = wikisql.read_tables(Path(args.tables))
    questions = wikisql.read_questions(Path(args.input), tables)
    used = {q.table_id for q in questions}
    wikisql.check_database(Path(args.db), tables, used)
    examples = [wikisql.to_example(q, tables[q.table_id]) for q in questions]
    return examples, {t: wikisql.to_schema(tables[t]) for t in sorted(used)}


def handle(args: argparse.Namespace) -> int:
    out = Path(args.out)
    flat_out = Path(args.flat_out) if args.flat_out else _flat_path(out)
    if out.resolve() == flat_out.resolve():
        raise BadInput("--out and --flat-out name the same file", uri=str(out))
    if args.max_examples is not None and args.max_examples < 1:
        raise BadInput(f"must be >= 1, got {args.max_examples}", field="--max-examples")
    if args.format == "wikisql":
        examples, schemas = _read_wikisql(args)
        databases = None
    else:
        if args.db is not None:
            raise BadInput("--db names WikiSQL's single SQLite file; other formats take --db-dir", field="--db")
        schemas = read_tables(Path(args.tables))
        examples = read_examples(args.format, Path(args.input))
        databases = DatabaseDir(Path(args.db_dir)) if args.db_dir else None
    if args.max_examples is not None:
        examples = examples[: args.max_examples]
    with flag_names({"sample_values": "--sample-values"}):
        split = prepare_split(examples, schemas, fmt=args.format, dataset=args.input, tables_path=args.tables,
                              databases=databases, sample_values=args.sample_values)
    write_files_atomically({out: jsonl_text(split.records), flat_out: jsonl_text(split.flats)})
    print(f"prepared {len(split.records)} records on {len(split.db_ids)} databases: {out} and {flat_out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="turn a Spider/BIRD/CoSQL/SParC/CHASE/WikiSQL dataset into DB-GPT-Hub records",
        description="Read a dataset and its tables.json and write one DB-GPT-Hub SFT record "
                    "{db_id, instruction, input, output, history} a line to OUT, and the flat form "
                    "{prompt, output} (reward model, PPO) to OUT's sibling <stem>_flat.jsonl. "
                    "Nothing is written unless every record is valid (exit code 2 names the file and record).",
    )
    p.add_argument("--format", choices=(*DATASET_FORMATS, "wikisql"), default="spider",
                   help="dataset format (default: %(default)s); bird appends evidence to the question, "
                        "cosql/sparc/chase give one record per turn with the earlier turns as history, "
                        "wikisql reads dev.jsonl with --tables dev.tables.jsonl and --db dev.db and turns each "
                        "logical form into SQL over the real header names")
    p.add_argument("--input", required=True, metavar="DATASET.json", help="dataset file (.json list or .jsonl)")
    p.add_argument("--tables", required=True, metavar="TABLES.json",
                   help="Spider-style schema file (WikiSQL: its <split>.tables.jsonl)")
    p.add_argument("--db", metavar="FILE.db", help="WikiSQL's SQLite file (only with --format wikisql)")
    p.add_argument("--out", required=True, metavar="OUT.jsonl", help="where to write the SFT records")
    p.add_argument("--flat-out", metavar="PATH", help="where to write the {prompt, output} records "
                                                      "(default: <OUT stem>_flat.jsonl beside OUT)")
    p.add_argument("--db-dir", metavar="DIR", help="check that every db_id has DIR/<db_id>/<db_id>.sqlite")
    p.add_argument("--sample-values", type=int, default=0, metavar="N",
                   help="show N sample values per column in the schema text; needs --db-dir (default: 0, off)")
    p.add_argument("--max-examples", type=int, metavar="N", help="keep only the first N examples (turns)")
    p.set_defaults(func=handle)
