"""A split into aligned rows: the whole Spider sample dev set, database checks, atomic writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from text2sql_core.data.dataset import DatabaseDir, gold_sql_line, prepare_split, write_files_atomically
from text2sql_core.data.formats import read_examples, read_tables
from text2sql_core.errors import BadInput


def test_spider_sample_dev_prepares_all_337(spider_sample: Path) -> None:
    dev = spider_sample / "dev.json"
    schemas = read_tables(spider_sample / "tables.json")
    split = prepare_split(read_examples("spider", dev), schemas, fmt="spider", dataset=dev,
                          tables_path=spider_sample / "tables.json", databases=DatabaseDir(spider_sample / "database"))
    raw = json.loads(dev.read_text())
    assert len(split.records) == len(split.flats) == len(split.metas) == len(split.items) == 337
    assert split.db_ids == sorted({r["db_id"] for r in raw}) and len(split.db_ids) == 6
    for i, (rec, flat, meta, item) in enumerate(zip(split.records, split.flats, split.metas, split.items,
                                                    strict=True)):
        assert rec["output"] == flat["output"] == meta["query"] == raw[i]["query"]
        assert rec["input"] == f"###Input:\n{raw[i]['question']}\n\n###Response:"
        assert flat["prompt"].endswith(rec["input"]) and meta["index"] == i and item == raw[i]
    gold = "".join(gold_sql_line(e.query, e.db_id) for e in split.examples)
    assert gold == (spider_sample / "dev_gold.sql").read_text()  # the official gold file, byte for byte


def _one(tmp_path: Path, db_id: str) -> Path:
    p = tmp_path / "d.json"
    p.write_text(json.dumps([{"db_id": "concert_singer", "question": "q", "query": "SELECT 1"},
                             {"db_id": db_id, "question": "q2", "query": "SELECT 2"}]))
    return p


def test_unknown_db_id_and_missing_database(tmp_path: Path, spider_sample: Path) -> None:
    schemas = read_tables(spider_sample / "tables_all.json")
    p = _one(tmp_path, "nowhere")
    with pytest.raises(BadInput, match=r"d\.json, record 1, field `db_id`: db_id 'nowhere' has no schema in .*tables"):
        prepare_split(read_examples("spider", p), schemas, fmt="spider", dataset=p, tables_path="tables.json")
    p = _one(tmp_path, "academic")  # in tables_all.json, not among the sample's databases
    with pytest.raises(BadInput, match=r"record 1, field `db_id`: db_id 'academic' has no database: "
                                       r".*database/academic/academic\.sqlite not found"):
        prepare_split(read_examples("spider", p), schemas, fmt="spider", dataset=p, tables_path="t",
                      databases=DatabaseDir(spider_sample / "database"))
    with pytest.raises(BadInput, match="database directory not found"):
        DatabaseDir(tmp_path / "nope")


def test_sample_values_need_databases(tmp_path: Path, spider_sample: Path) -> None:
    schemas = read_tables(spider_sample / "tables.json")
    p = _one(tmp_path, "pets_1")
    exs = read_examples("spider", p)
    with pytest.raises(BadInput, match="field `sample_values`: sample values are read from the databases"):
        prepare_split(exs, schemas, fmt="spider", dataset=p, tables_path="t", sample_values=2)
    split = prepare_split(exs, schemas, fmt="spider", dataset=p, tables_path="t", sample_values=2,
                          databases=DatabaseDir(spider_sample / "database"))
    assert "PetType (e.g. 'cat', 'dog')" in split.records[1]["instruction"]


def test_fetched_databases_only_those_used(tmp_path: Path, spider_sample: Path) -> None:
    asked: list[str] = []

    def fetch(db_id: str, dest: Path) -> bool:
        asked.append(db_id)
        src = spider_sample / "database" / db_id / f"{db_id}.sqlite"
        if not src.exists():
            return False
        shutil.copyfile(src, dest)
        return True

    dbs = DatabaseDir(tmp_path / "cache", label="store://data/database", fetch=fetch)
    schemas = read_tables(spider_sample / "tables_all.json")
    p = _one(tmp_path, "concert_singer")
    split = prepare_split(read_examples("spider", p), schemas, fmt="spider", dataset=p, tables_path="t", databases=dbs)
    assert asked == ["concert_singer"] and split.databases["concert_singer"].is_file()
    p = _one(tmp_path, "academic")
    with pytest.raises(BadInput, match=r"store://data/database/academic/academic\.sqlite not found"):
        prepare_split(read_examples("spider", p), schemas, fmt="spider", dataset=p, tables_path="t", databases=dbs)


def test_write_files_atomically_all_or_nothing(tmp_path: Path) -> None:
    a, b = tmp_path / "out" / "a.jsonl", tmp_path / "out" / "b.jsonl"
    write_files_atomically({a: "1\n", b: b"2\n"})
    assert a.read_text() == "1\n" and b.read_text() == "2\n"
    blocker = tmp_path / "out" / "dir.jsonl"
    blocker.mkdir()
    with pytest.raises(BadInput, match=r"dir\.jsonl: is a directory"):
        write_files_atomically({a: "new\n", blocker: "x"})
    assert a.read_text() == "1\n"  # the first file was not replaced either
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.jsonl", "b.jsonl", "dir.jsonl"]


def test_gold_line_keeps_one_line_per_query() -> None:
    assert gold_sql_line("SELECT a\n FROM\tt", "db") == "SELECT a  FROM t\tdb\n"
