"""The DB-GPT-Hub prompt: byte-identical to the reference recipe's worked example, and its documented quirks."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from text2sql_core.data.formats import DbSchema, Example, read_tables
from text2sql_core.data.prompt import flat_record, read_sample_values, schema_text, sft_record


@pytest.fixture(scope="module")
def reference(shared_dir: Path) -> dict:
    return json.loads((shared_dir / "fixtures" / "reference_example.json").read_text())


@pytest.fixture(scope="module")
def all_schemas(spider_sample: Path) -> dict[str, DbSchema]:
    return read_tables(spider_sample / "tables_all.json")


def _schema(tables: list[str], columns: list[tuple[int, str]], pks: list, fks: list) -> DbSchema:
    return DbSchema(db_id="d", table_names=tuple(tables), columns=tuple(columns), primary_keys=tuple(pks),
                    foreign_keys=tuple(fks), entry={})


def test_worked_example_is_byte_identical(reference: dict, all_schemas: dict[str, DbSchema]) -> None:
    want = reference["sft_record"]
    ex = Example(db_id=want["db_id"], question=reference["question"], query=want["output"], history=(),
                 record="0", item={})
    record = sft_record(ex, schema_text(all_schemas[want["db_id"]]))
    assert json.dumps(record) == json.dumps(want)  # same keys, same order, same bytes
    assert json.dumps(flat_record(record)) == json.dumps(reference["flat_record"])


def test_table_without_primary_key_runs_on_and_foreign_keys_keep_file_order() -> None:
    s = _schema(["a", "b"], [(0, "x"), (0, "y"), (1, "z")], [3], [(3, 1), (2, 1)])
    assert schema_text(s) == ("d contains tables such as a, b. Table a has columns such as x, y. "
                              "Table b has columns such as z. z is the primary key.\n"
                              "The z of b is the foreign key of x of a.\n"
                              "The y of a is the foreign key of x of a.\n")


def test_composite_primary_key_only_after_its_own_table() -> None:
    s = _schema(["a", "link"], [(0, "id"), (1, "a_id"), (1, "b_id")], [1, [2, 3]], [])
    text = schema_text(s)
    assert text.count("The combination of") == 1
    assert "Table link has columns such as a_id, b_id. The combination of (a_id, b_id) are the primary key.\n" in text


def test_flat_prompt_carries_earlier_turns() -> None:
    s = _schema(["t"], [(0, "c")], [1], [])
    ex = Example(db_id="d", question="and the second?", query="SELECT 2", record="0, turn 2", item={},
                 history=(("first?", "SELECT 1"),))
    rec = sft_record(ex, schema_text(s))
    assert rec["history"] == [["###Input:\nfirst?\n\n###Response:", "SELECT 1"]]
    prompt = flat_record(rec)["prompt"]
    assert prompt.endswith("c is the primary key.\n###Input:\nfirst?\n\n###Response:SELECT 1\n"
                           "###Input:\nand the second?\n\n###Response:")


def test_sample_values_render_as_literals(tmp_path: Path) -> None:
    db = tmp_path / "d.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (id INTEGER, name TEXT, note TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?)",
                     [(1, "O'Hara", "x" * 80), (2, "Lee", None), (2, "Lee", "short"), (3, "Kim", "s")])
    conn.commit()
    conn.close()
    s = _schema(["t"], [(0, "id"), (0, "name"), (0, "note")], [1], [])
    samples = read_sample_values(db, s, 2)
    assert samples == {(0, "id"): [1, 2], (0, "name"): ["O'Hara", "Lee"], (0, "note"): ["short", "s"]}
    assert ("Table t has columns such as id (e.g. 1, 2), name (e.g. 'O''Hara', 'Lee'), note (e.g. 'short', 's')."
            in schema_text(s, samples))
    assert schema_text(s, read_sample_values(db, s, 0)) == schema_text(s)
