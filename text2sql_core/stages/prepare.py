"""The ``prepare`` stage: a dataset (``data`` section of the run config) into the files every later stage reads.

Published files (rows of the same split are aligned line by line):

* ``train.jsonl``, ``dev.jsonl``: DB-GPT-Hub SFT records ``{db_id, instruction, input, output, history}``;
* ``train_flat.jsonl``, ``dev_flat.jsonl``: ``{prompt, output}`` (reward model, PPO, prediction);
* ``train_meta.jsonl``, ``dev_meta.jsonl``: ``{index, db_id, question, query}`` (rewards run gold SQL);
* ``dev.json``: the dev items, Spider style, and ``dev_gold.sql``: ``SQL<TAB>db_id`` (the evaluator);
* ``tables.json``: the schemas of the databases used; ``database/<db_id>/<db_id>.sqlite``: their copies,
  so that prediction, rewards and evaluation find the databases in the step's own artifacts.

Dataset paths are local paths or ``store://<key>`` URIs in the run's artifact store; a database
directory given as a URI is fetched one used database at a time, never as a whole tree.

WikiSQL (``data.format: wikisql``) has one SQLite file per split instead of a folder per database:
the files above are written the same way (``tables.json`` holds one schema per WikiSQL table, with
its real header names), no ``database/``, and ``wikisql/dev.jsonl``, ``wikisql/dev.tables.jsonl``,
``wikisql/dev.db`` (the dev questions kept, their tables, the dev database) for the evaluate step.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from ..data.dataset import (
    DatabaseDir,
    PreparedSplit,
    gold_sql_line,
    json_text,
    jsonl_text,
    prepare_split,
    write_files_atomically,
)
from ..data.formats import read_examples, read_tables
from ..errors import BadInput
from .base import Stage, StageConfigBase, StageContext

__all__ = ["STAGE", "STORE_SCHEME", "WIKISQL_DIR", "PrepareConfig", "run"]

STORE_SCHEME = "store://"
#: where a WikiSQL run's prepare step keeps the dev split in WikiSQL's own files (for the evaluate step)
WIKISQL_DIR = "wikisql"


class PrepareConfig(StageConfigBase):
    """Settings of data preparation; the dataset itself is the run config's ``data`` section."""

    # Prompt
    sample_values: int = Field(0, ge=0, description="Sample values shown per column in the schema text "
                                                    "(`name (e.g. 'a', 'b')`); 0 keeps DB-GPT-Hub's prompt.")


def _store_key(uri: str) -> str:
    return uri[len(STORE_SCHEME):].strip("/")


def _local_file(ctx: StageContext, uri: str, field: str) -> Path:
    """A dataset file as a local path, downloaded first when it is a ``store://`` URI."""
    if not uri.startswith(STORE_SCHEME):
        return Path(uri)
    key = _store_key(uri)
    if not key or not ctx.store.exists(key):
        raise BadInput("not found in the artifact store", uri=uri, field=field, stage=ctx.step.name)
    dest = ctx.workdir / "data" / key
    dest.parent.mkdir(parents=True, exist_ok=True)
    ctx.store.get_file(key, dest)
    return dest


def _database_dir(ctx: StageContext, uri: str, field: str) -> DatabaseDir:
    if not uri.startswith(STORE_SCHEME):
        if not Path(uri).is_dir():
            raise BadInput("database directory not found", uri=uri, field=field, stage=ctx.step.name)
        return DatabaseDir(Path(uri))
    prefix = _store_key(uri)

    def fetch(db_id: str, dest: Path) -> bool:
        key = f"{prefix}/{db_id}/{db_id}.sqlite"
        if not ctx.store.exists(key):
            return False
        ctx.store.get_file(key, dest)
        return True

    return DatabaseDir(ctx.workdir / "databases" / prefix, label=uri, fetch=fetch)


def _split(ctx: StageContext, name: str, schemas: dict, tables_uri: str, databases: DatabaseDir,
           limit: int | None) -> PreparedSplit:
    data = ctx.run_config.data
    uri = getattr(data, name)
    path = _local_file(ctx, uri, f"data.{name}")
    examples = read_examples(data.format, path)
    if limit is not None:
        examples = examples[:limit]
    return prepare_split(examples, schemas, fmt=data.format, dataset=uri, tables_path=tables_uri,
                         databases=databases, sample_values=ctx.config.sample_values)


@dataclass(frozen=True)
class _WikiSplit:
    prepared: PreparedSplit
    questions: list[Any]
    #: table id -> WikiTable, the tables the kept questions use
    tables: dict[str, Any]
    db_path: Path


def _wikisql_split(ctx: StageContext, name: str, tables_field: str, db_field: str,
                   limit: int | None) -> _WikiSplit:
    """One WikiSQL split: its questions checked against its tables file and its SQLite file."""
    from ..data import wikisql

    data = ctx.run_config.data
    uri, tables_uri, db_uri = (getattr(data, f) for f in (name, tables_field, db_field))
    tables = wikisql.read_tables(_local_file(ctx, tables_uri, f"data.{tables_field}"))
    questions = wikisql.read_questions(_local_file(ctx, uri, f"data.{name}"), tables)[:limit]
    db_path = _local_file(ctx, db_uri, f"data.{db_field}")
    if not db_path.is_file():
        raise BadInput("WikiSQL database file not found", uri=db_uri, field=f"data.{db_field}", stage=ctx.step.name)
    used = {q.table_id: tables[q.table_id] for q in questions}
    wikisql.check_database(db_path, tables, set(used))
    examples = [wikisql.to_example(q, used[q.table_id]) for q in questions]
    prepared = prepare_split(examples, {t: wikisql.to_schema(table) for t, table in used.items()},
                             fmt="wikisql", dataset=uri, tables_path=tables_uri)
    return _WikiSplit(prepared, questions, used, db_path)


def _run_wikisql(ctx: StageContext) -> dict[str, Any]:
    """WikiSQL's three files per split into the same published files, plus the dev split as WikiSQL has it."""
    from ..data.wikisql import tables_jsonl, to_schema

    data = ctx.run_config.data
    out = ctx.output_dir
    if ctx.config.sample_values:
        raise BadInput("sample values are not shown for WikiSQL: its tables live in one file, not one database "
                       "each", field="stages.prepare.sample_values", stage=ctx.step.name)
    train = _wikisql_split(ctx, "train", "train_tables" if data.train_tables else "tables",
                           "train_db_file" if data.train_db_file else "db_file", data.max_train)
    dev = _wikisql_split(ctx, "dev", "tables", "db_file", data.max_dev)
    ctx.log.info("dataset read", train=len(train.questions), dev=len(dev.questions), format=data.format)
    used = {**train.tables, **dev.tables}
    files: dict[Path, str] = {
        out / "tables.json": json_text([to_schema(t).entry for t in used.values()]),
        out / "dev.json": json_text(dev.prepared.items),
        out / "dev_gold.sql": "".join(gold_sql_line(e.query, e.db_id) for e in dev.prepared.examples),
        out / WIKISQL_DIR / "dev.jsonl": jsonl_text(q.item for q in dev.questions),
        out / WIKISQL_DIR / "dev.tables.jsonl": tables_jsonl(dev.tables.values()),
    }
    for name, split in (("train", train.prepared), ("dev", dev.prepared)):
        files[out / f"{name}.jsonl"] = jsonl_text(split.records)
        files[out / f"{name}_flat.jsonl"] = jsonl_text(split.flats)
        files[out / f"{name}_meta.jsonl"] = jsonl_text(split.metas)
    write_files_atomically(files)
    shutil.copyfile(dev.db_path, out / WIKISQL_DIR / "dev.db")
    return {"format": data.format, "train_examples": len(train.questions), "dev_examples": len(dev.questions),
            "train_databases": len(train.tables), "dev_databases": len(dev.tables), "databases": len(used)}


def run(ctx: StageContext) -> dict[str, Any]:
    data = ctx.run_config.data
    if data.format == "wikisql":
        return _run_wikisql(ctx)
    out = ctx.output_dir
    schemas = read_tables(_local_file(ctx, data.tables, "data.tables"))
    train_schemas = (read_tables(_local_file(ctx, data.train_tables, "data.train_tables"))
                     if data.train_tables else schemas)
    dev_dbs = _database_dir(ctx, data.db_dir, "data.db_dir")
    train_dbs = _database_dir(ctx, data.train_db_dir, "data.train_db_dir") if data.train_db_dir else dev_dbs
    train = _split(ctx, "train", train_schemas, data.train_tables or data.tables, train_dbs, data.max_train)
    dev = _split(ctx, "dev", schemas, data.tables, dev_dbs, data.max_dev)
    ctx.log.info("dataset read", train=len(train.records), dev=len(dev.records), format=data.format)

    used = set(train.db_ids) | set(dev.db_ids)
    tables = [s.entry for s in {**train_schemas, **schemas}.values() if s.db_id in used]
    files: dict[Path, str] = {
        out / "tables.json": json_text(tables),
        out / "dev.json": json_text(dev.items),
        out / "dev_gold.sql": "".join(gold_sql_line(e.query, e.db_id) for e in dev.examples),
    }
    for name, split in (("train", train), ("dev", dev)):
        files[out / f"{name}.jsonl"] = jsonl_text(split.records)
        files[out / f"{name}_flat.jsonl"] = jsonl_text(split.flats)
        files[out / f"{name}_meta.jsonl"] = jsonl_text(split.metas)
    write_files_atomically(files)
    # dev's copy wins where both splits name a db_id (they share a directory unless train_db_dir is set)
    for db_id, src in sorted({**train.databases, **dev.databases}.items()):
        dest = out / "database" / db_id / f"{db_id}.sqlite"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    return {
        "format": data.format,
        "train_examples": len(train.records),
        "dev_examples": len(dev.records),
        "train_databases": len(train.db_ids),
        "dev_databases": len(dev.db_ids),
        "databases": len(used),
    }


STAGE = Stage(name="prepare", config_cls=PrepareConfig, run=run,
              description="Read the dataset, build DB-GPT-Hub prompts; publish splits, schemas, databases.")
