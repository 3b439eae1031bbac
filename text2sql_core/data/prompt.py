"""The DB-GPT-Hub prompt: the schema as English sentences, then the question, then ``###Response:``.

The SFT record ``{db_id, instruction, input, output, history}`` is byte-identical to DB-GPT-Hub's
``sql_data_process.py`` for Spider (a test checks the reference recipe's worked example), because a
model fine-tuned on one must be evaluated on exactly the same text. The schema text keeps its quirks:
the stray ``"`` line before ``##Instruction:``, no space after ``me.``, one sentence per table whose
primary-key sentences end in a newline while a table without a primary key runs on into the next
``Table ...`` sentence, and foreign keys in ``tables.json`` order.

The flat form ``{prompt, output}`` (reward model, PPO, prediction) is one string a causal model
continues: the instruction without its trailing blank line, one newline, the earlier turns of the
conversation each as ``###Input:\\n<question>\\n\\n###Response:<sql>`` plus a newline, then the input.

Choices where DB-GPT-Hub pins nothing (documented, not byte-compatible by construction):

* a composite primary key (BIRD) reads ``The combination of (a, b) are the primary key.`` after the
  table it belongs to; DB-GPT-Hub also prints an empty ``The combination of ()`` after every other
  table, which carries no information and is left out;
* a multi-turn record's ``history`` holds a copy of the earlier turns only; DB-GPT-Hub shares one list
  between the turns, so after serialisation every turn lists the whole conversation, its own answer
  included, which leaks the target into the prompt;
* sample values (``sample_values=N``, off by default) follow a column's name as ``name (e.g. v1, v2)``
  with strings as SQL literals, so the model sees how values are spelled and quoted.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import BadInput
from .formats import DbSchema, Example

__all__ = [
    "INPUT_PROMPT",
    "INSTRUCTION_PROMPT",
    "SampleValues",
    "flat_prompt",
    "flat_record",
    "read_sample_values",
    "schema_text",
    "sft_record",
]

INSTRUCTION_PROMPT = (
    "I want you to act as a SQL terminal in front of an example database, "
    "you need only to return the sql command to me.Below is an instruction that describes a task, "
    "Write a response that appropriately completes the request.\n\"\n##Instruction:\n{}\n"
)
INPUT_PROMPT = "###Input:\n{}\n\n###Response:"

#: (table index, column name) -> sample values, rendered into the schema sentence of that column
SampleValues = Mapping[tuple[int, str], Sequence[Any]]

#: longer text values are skipped as samples: they bloat the prompt and teach nothing about spelling
_MAX_SAMPLE_CHARS = 40


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value) if isinstance(value, float) else str(value)


def schema_text(schema: DbSchema, samples: SampleValues | None = None) -> str:
    """The schema as DB-GPT-Hub's sentences: tables, columns per table, primary keys, foreign keys."""
    names = schema.table_names
    parts = [f"{schema.db_id} contains tables such as {', '.join(names)}. "]
    for t, table in enumerate(names):
        cols = []
        for ti, col in schema.columns:
            if ti != t:
                continue
            values = samples.get((ti, col)) if samples else None
            cols.append(f"{col} (e.g. {', '.join(_literal(v) for v in values)})" if values else col)
        parts.append(f"Table {table} has columns such as {', '.join(cols)}. ")
        for pk in schema.primary_keys:
            if isinstance(pk, int):
                ti, col = schema.column(pk)
                if ti == t:
                    parts.append(f"{col} is the primary key.\n")
            else:
                keys = [schema.column(k)[1] for k in pk if schema.column(k)[0] == t]
                if keys:
                    parts.append(f"The combination of ({', '.join(keys)}) are the primary key.\n")
    for src, dst in schema.foreign_keys:
        (st, scol), (dt, dcol) = schema.column(src), schema.column(dst)
        parts.append(f"The {scol} of {names[st]} is the foreign key of {dcol} of {names[dt]}.\n")
    return "".join(parts)


def sft_record(example: Example, schema_sentences: str) -> dict[str, Any]:
    """The DB-GPT-Hub SFT record; ``history`` holds ``[input, sql]`` pairs of the earlier turns."""
    return {
        "db_id": example.db_id,
        "instruction": INSTRUCTION_PROMPT.format(schema_sentences),
        "input": INPUT_PROMPT.format(example.question),
        "output": example.query,
        "history": [[INPUT_PROMPT.format(q), sql] for q, sql in example.history],
    }


def flat_prompt(record: Mapping[str, Any]) -> str:
    """One prompt string from an SFT record (see the module docstring for the layout)."""
    turns = "".join(f"{inp}{out}\n" for inp, out in record["history"])
    return record["instruction"].rstrip("\n") + "\n" + turns + record["input"]


def flat_record(record: Mapping[str, Any]) -> dict[str, str]:
    return {"prompt": flat_prompt(record), "output": record["output"]}


def read_sample_values(db_path: Path, schema: DbSchema, n: int) -> dict[tuple[int, str], list[Any]]:
    """Up to ``n`` distinct non-null values per column, in table order (deterministic for a file).

    Opened read-only: preparing data must never change a database.
    """
    if n <= 0:
        return {}
    out: dict[tuple[int, str], list[Any]] = {}
    try:
        conn = sqlite3.connect(Path(db_path).resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BadInput(f"cannot open database: {exc}", uri=str(db_path)) from None
    try:
        conn.text_factory = lambda b: b.decode("utf-8", errors="replace")
        for ti, col in schema.columns:
            table = schema.table_names[ti]
            sql = (f"SELECT DISTINCT {_ident(col)} FROM {_ident(table)} WHERE {_ident(col)} IS NOT NULL "
                   f"LIMIT {n * 4}")  # a few spare: long or binary values are skipped
            try:
                rows = conn.execute(sql).fetchall()
            except sqlite3.Error as exc:
                raise BadInput(f"schema of {schema.db_id!r} does not match its database: {exc}",
                               uri=str(db_path), field=f"{table}.{col}") from None
            values = [v for (v,) in rows if isinstance(v, int | float)
                      or (isinstance(v, str) and 0 < len(v) <= _MAX_SAMPLE_CHARS and "\n" not in v)]
            out[(ti, col)] = values[:n]
    finally:
        conn.close()
    return out
