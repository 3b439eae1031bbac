"""The demo dataset: Spider layout, executable gold SQL, held-out values and combinations, determinism."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from text2sql_core.data.demo import DEMO_FILES, TEMPLATES, DemoDataset, write_demo
from text2sql_core.errors import BadInput


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoDataset]:
    out = tmp_path_factory.mktemp("demo") / "data"
    return out, write_demo(out, seed=0, size="small")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(out: Path, name: str) -> list[dict]:
    return json.loads((out / name).read_text())


def test_layout_sizes_and_schemas(demo: tuple[Path, DemoDataset]) -> None:
    out, _ = demo
    train, dev, tables = _load(out, "train.json"), _load(out, "dev.json"), _load(out, "tables.json")
    assert (len(train), len(dev)) == (600, 100)
    assert sorted(p.name for p in out.iterdir()) == sorted(DEMO_FILES)
    assert 3 <= len(tables) <= 5
    for entry in tables:
        assert 3 <= len(entry["table_names_original"]) <= 5
        assert entry["primary_keys"] and entry["foreign_keys"]
        assert (out / "database" / entry["db_id"] / f"{entry['db_id']}.sqlite").is_file()
    gold = (out / "dev_gold.sql").read_text().splitlines()
    assert gold == [f"{d['query']}\t{d['db_id']}" for d in dev]
    assert set(train[0]) == {"db_id", "question", "query", "template"}
    assert {d["holdout"] for d in dev} == {"values", "combination"}


def test_every_gold_sql_runs_and_returns_rows(demo: tuple[Path, DemoDataset]) -> None:
    out, _ = demo
    conns: dict[str, sqlite3.Connection] = {}
    for item in _load(out, "train.json") + _load(out, "dev.json"):
        db = item["db_id"]
        if db not in conns:
            conns[db] = sqlite3.connect(f"file:{out / 'database' / db / f'{db}.sqlite'}?mode=ro", uri=True)
        rows = conns[db].execute(item["query"]).fetchall()
        assert rows and rows not in ([(0,)], [(None,)]), item
    for c in conns.values():
        c.close()


def test_sql_families_covered(demo: tuple[Path, DemoDataset]) -> None:
    out, _ = demo
    sql = "\n".join(i["query"] for i in _load(out, "train.json"))
    for needle in ("count(*)", "WHERE", " = '", " > ", " < ", "LIKE", "BETWEEN", "avg(", "sum(", "max(",
                   "GROUP BY", "HAVING", "ORDER BY", "LIMIT", "JOIN", "IN (SELECT", "NOT IN", "> (SELECT",
                   "UNION", "INTERSECT", "EXCEPT", "DISTINCT"):
        assert needle in sql, needle
    assert 25 <= len(TEMPLATES) <= 40
    assert {i["template"] for i in _load(out, "train.json")} == {t.id for t in TEMPLATES}


def _literals(item: dict) -> set[tuple[str, ...]]:
    """Values a query mentions, keyed the way the hold-out splits them (numbers per column)."""
    q = item["query"]
    found: set[tuple[str, ...]] = {("str", s) for s in re.findall(r"'([^']*)'", q)}
    table = re.search(r"FROM (\w+)", q).group(1)  # type: ignore[union-attr]
    for col, a, b in re.findall(r"(\w+) (?:>|<|BETWEEN) (\d+(?:\.\d+)?)(?: AND (\d+(?:\.\d+)?))?", q):
        found |= {("num", item["db_id"], table, col, v) for v in (a, b) if v}
    found |= {("k", k) for k in re.findall(r"(?:LIMIT|count\(\*\) >) (\d+)", q) if k != "1"}
    return found


def test_dev_values_never_seen_in_train(demo: tuple[Path, DemoDataset]) -> None:
    out, ds = demo
    train, dev = _load(out, "train.json"), _load(out, "dev.json")
    train_lits = set().union(*(_literals(i) for i in train))
    for item in dev:
        assert not _literals(item) & train_lits, item
    assert not {q["question"] for q in dev} & {q["question"] for q in train}
    # and by the generator's own account of the value pools
    assert not set().union(*(e.values for e in ds.dev)) & set().union(*(e.values for e in ds.train))
    assert sum(1 for e in ds.dev if e.holdout == "values" and e.values) >= 60


def test_held_out_combinations(demo: tuple[Path, DemoDataset]) -> None:
    _, ds = demo
    trained = {(e.template, e.combo) for e in ds.train}
    held = [e for e in ds.dev if e.holdout == "combination"]
    assert 15 <= len(held) <= 25  # ~20% of dev
    assert len({(e.template, e.combo) for e in held}) >= 12
    for e in held:
        assert (e.template, e.combo) not in trained
        assert (e.template, e.combo) in set(ds.heldout_combos)
        assert any(t == e.template for t, _ in trained), e  # the template is learnt on other tables
        assert any(c == e.combo for _, c in trained), e  # and the table with other templates
    for e in ds.dev:
        if e.holdout == "values":
            assert (e.template, e.combo) in trained


def test_same_seed_same_bytes_other_seed_differs(demo: tuple[Path, DemoDataset], tmp_path: Path) -> None:
    out, _ = demo
    again = write_demo(tmp_path / "again", seed=0, size="small")
    assert _files(tmp_path / "again") == _files(out)
    assert [e.question for e in again.train] == [e.question for e in demo[1].train]
    write_demo(tmp_path / "other", seed=1, size="small")
    other = _files(tmp_path / "other")
    assert other["train.json"] != _files(out)["train.json"]
    assert other["database/college/college.sqlite"] != _files(out)["database/college/college.sqlite"]


def test_output_directory_rules(tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(BadInput, match=r"busy: exists and does not hold a demo dataset"):
        write_demo(busy, size="small")
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    out = tmp_path / "d"
    write_demo(out, seed=2, train_size=50, dev_size=20)
    write_demo(out, seed=3, train_size=40, dev_size=10)  # an earlier demo dataset is replaced as a whole
    assert len(_load(out, "train.json")) == 40 and len(_load(out, "dev.json")) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "d"]  # no temporary directories left
