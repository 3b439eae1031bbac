"""Dataset readers: every format into examples, every malformed input into a BadInput naming file and record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from text2sql_core.data.formats import load_json_records, read_examples, read_tables
from text2sql_core.errors import BadInput

TABLES = [{
    "db_id": "shop",
    "table_names_original": ["item", "sale"],
    "column_names_original": [[-1, "*"], [0, "id"], [0, "name"], [1, "item_id"], [1, "qty"]],
    "column_types": ["text", "number", "text", "number", "number"],
    "primary_keys": [1],
    "foreign_keys": [[3, 1]],
}]


def _write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_spider_reads_fields_verbatim(tmp_path: Path) -> None:
    p = _write(tmp_path / "d.json", [{"db_id": "shop", "question": "How many items ?", "query": "SELECT  count(*) FROM item",
                                      "sql": {}}])
    [ex] = read_examples("spider", p)
    assert (ex.db_id, ex.question, ex.query, ex.history, ex.record) == \
        ("shop", "How many items ?", "SELECT  count(*) FROM item", (), "0")
    assert ex.item["sql"] == {} and ex.item["query"] == ex.query  # source fields kept for dev.json


def test_bird_appends_evidence_and_reads_sql_field(tmp_path: Path) -> None:
    p = _write(tmp_path / "bird.json", [
        {"db_id": "shop", "question": "Total sold of pens?", "evidence": "pens refers to name = 'pen'",
         "SQL": "SELECT sum(qty) FROM sale", "difficulty": "simple"},
        {"db_id": "shop", "question": "How many items?", "evidence": "", "SQL": "SELECT count(*) FROM item"},
    ])
    a, b = read_examples("bird", p)
    assert a.question == "Total sold of pens? pens refers to name = 'pen'"
    assert a.query == "SELECT sum(qty) FROM sale"
    assert a.item["question"] == "Total sold of pens?" and a.item["difficulty"] == "simple"
    assert b.question == "How many items?"


@pytest.mark.parametrize("fmt", ["cosql", "sparc", "chase"])
def test_multi_turn_gives_one_example_per_turn_with_history(tmp_path: Path, fmt: str) -> None:
    p = _write(tmp_path / f"{fmt}.json", [
        {"database_id": "shop", "interaction": [
            {"utterance": "List items.", "query": "SELECT name FROM item"},
            {"utterance": "Only id 1.", "query": "SELECT name FROM item WHERE id = 1"},
            {"utterance": "How many?", "query": "SELECT count(*) FROM item WHERE id = 1"},
        ], "final": {"utterance": "x", "query": "y"}},
        {"database_id": "shop", "interaction": [{"utterance": "Sales?", "query": "SELECT * FROM sale"}]},
    ])
    exs = read_examples(fmt, p)
    assert [e.record for e in exs] == ["0, turn 1", "0, turn 2", "0, turn 3", "1, turn 1"]
    assert exs[0].history == ()
    assert exs[2].history == (("List items.", "SELECT name FROM item"),
                              ("Only id 1.", "SELECT name FROM item WHERE id = 1"))
    assert exs[3].history == ()  # a new conversation starts empty
    assert exs[2].item == {"db_id": "shop", "question": "How many?", "query": "SELECT count(*) FROM item WHERE id = 1",
                           "interaction": 0, "turn": 3}


def test_jsonl_dataset(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"db_id": "shop", "question": "q1", "query": "SELECT 1"}\n\n'
                 '{"db_id": "shop", "question": "q2", "query": "SELECT 2"}\n')
    assert [e.question for e in read_examples("spider", p)] == ["q1", "q2"]


def test_tables_keys_resolved(tmp_path: Path) -> None:
    schema = read_tables(_write(tmp_path / "t.json", TABLES))["shop"]
    assert schema.columns == ((0, "id"), (0, "name"), (1, "item_id"), (1, "qty"))
    assert schema.column(3) == (1, "item_id") and schema.foreign_keys == ((3, 1),)


@pytest.mark.parametrize(("content", "match"), [
    ('[{"db_id": "shop", "question": "q", "query": "SELECT 1"', r"d\.json: malformed JSON in dataset: .*line 1"),
    ('{"db_id": "shop"}', r"d\.json: dataset must hold a JSON list of records, found a JSON dict"),
    ('[{"db_id": "shop", "question": "  ", "query": "SELECT 1"}]', r"d\.json, record 0, field `question`: is empty"),
    ('[{"db_id": "shop", "question": "q", "query": "SELECT 1"}, {"db_id": "shop", "question": "q"}]',
     r"d\.json, record 1, field `query`: missing field"),
    ('[{"db_id": "shop", "question": "q", "query": ""}]', r"record 0, field `query`: is empty"),
    ('[{"db_id": 3, "question": "q", "query": "SELECT 1"}]', r"record 0, field `db_id`: must be a str, found int"),
    ('[["shop", "q"]]', r"record 0: record must be a JSON object"),
    ("[]", r"d\.json: dataset holds no examples"),
])
def test_bad_spider_dataset(tmp_path: Path, content: str, match: str) -> None:
    p = tmp_path / "d.json"
    p.write_text(content)
    with pytest.raises(BadInput, match=match):
        read_examples("spider", p)


def test_bad_multi_turn_names_record_and_turn(tmp_path: Path) -> None:
    p = _write(tmp_path / "s.json", [{"database_id": "shop", "interaction": [
        {"utterance": "a", "query": "SELECT 1"}, {"utterance": "", "query": "SELECT 2"}]}])
    with pytest.raises(BadInput, match=r"s\.json, record 0, turn 2, field `utterance`: is empty"):
        read_examples("sparc", p)
    p = _write(tmp_path / "s.json", [{"database_id": "shop", "interaction": []}])
    with pytest.raises(BadInput, match=r"record 0, field `interaction`: is empty"):
        read_examples("cosql", p)


def test_bad_bird_sql(tmp_path: Path) -> None:
    p = _write(tmp_path / "b.json", [{"db_id": "shop", "question": "q", "query": "SELECT 1"}])
    with pytest.raises(BadInput, match=r"b\.json, record 0, field `SQL`: missing field"):
        read_examples("bird", p)


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"nope\.json: tables file not found"):
        read_tables(tmp_path / "nope.json")
    with pytest.raises(BadInput, match=r"unknown dataset format 'wikisql'"):
        read_examples("wikisql", tmp_path / "nope.json")
    with pytest.raises(BadInput, match="not UTF-8"):
        (tmp_path / "bin.json").write_bytes(b"[\xff]")
        load_json_records(tmp_path / "bin.json", what="dataset")


def test_duplicate_db_id_names_both_records(tmp_path: Path) -> None:
    p = _write(tmp_path / "t.json", [TABLES[0], {**TABLES[0], "db_id": "other"}, TABLES[0]])
    with pytest.raises(BadInput, match=r"t\.json, record 2, field `db_id`: duplicate db_id 'shop' "
                                       r"\(first defined by record 0\)"):
        read_tables(p)


@pytest.mark.parametrize(("change", "match"), [
    ({"foreign_keys": [[3, 9]]}, r"record 0 \(shop\), field `foreign_keys`: column index 9 is not between 1 and 4"),
    ({"primary_keys": [[1, 0]]}, r"field `primary_keys`: column index 0"),
    ({"column_names_original": [[-1, "*"], [5, "x"]]}, r"field `column_names_original`: entry 1 must be"),
    ({"table_names_original": []}, r"field `table_names_original`: is empty"),
    ({"column_names_original": [[0, "id"], [0, "name"]]}, r"field `column_names_original`: entry 0 must be \[-1"),
])
def test_bad_tables_entry(tmp_path: Path, change: dict, match: str) -> None:
    p = _write(tmp_path / "t.json", [{**TABLES[0], **change}])
    with pytest.raises(BadInput, match=match):
        read_tables(p)
