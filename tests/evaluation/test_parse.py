"""The parser builds the official structure: checked against dev.json's `sql` field for every gold query."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from text2sql_core.data.formats import read_tables
from text2sql_core.evaluation.parse import ParseError, empty_sql, parse_sql
from text2sql_core.evaluation.schema import ALL_COLUMNS, Schema, column_id, table_id


def _to_spider_ids(node: Any, columns: dict[str, int], tables: dict[str, int]) -> Any:
    """Our ids ("__t.c__", "__t__") as dev.json writes them (indices into tables.json), tuples as lists."""
    if isinstance(node, dict):
        return {k: _to_spider_ids(v, columns, tables) for k, v in node.items()}
    if isinstance(node, tuple | list):
        if len(node) == 2 and node[0] == "table_unit":
            return ["table_unit", tables[node[1]]]
        return [_to_spider_ids(v, columns, tables) for v in node]
    if isinstance(node, str) and node in columns:
        return columns[node]
    return node


def test_every_gold_query_parses_exactly_as_dev_json(spider_sample: Path, schemas: dict[str, Schema]):
    dev = json.loads((spider_sample / "dev.json").read_text())
    assert len(dev) == 337
    ids = {}
    for db_id, s in read_tables(spider_sample / "tables.json").items():
        columns = {ALL_COLUMNS: 0} | {column_id(s.table_names[t], c): i
                                     for i, (t, c) in enumerate(s.columns, 1)}
        ids[db_id] = columns, {table_id(t): i for i, t in enumerate(s.table_names)}
    mismatched = [i for i, item in enumerate(dev)
                  if _to_spider_ids(parse_sql(item["query"], schemas[item["db_id"]]), *ids[item["db_id"]])
                  != item["sql"]]
    assert mismatched == [], f"{len(mismatched)} gold queries parse unlike dev.json, e.g. {mismatched[:5]}"


@pytest.fixture(scope="module")
def concert(schemas: dict[str, Schema]) -> Schema:
    return schemas["concert_singer"]


def test_structure_of_a_join_with_aliases_and_nested_query(concert: Schema):
    sql = parse_sql("SELECT T1.name, count(*) FROM singer AS T1 JOIN singer_in_concert AS T2 "
                    "ON T1.singer_id = T2.singer_id WHERE T1.age > (SELECT avg(age) FROM singer) "
                    "GROUP BY T1.name ORDER BY count(*) DESC LIMIT 3", concert)
    name, sid = "__singer.name__", "__singer.singer_id__"
    assert sql["select"] == (False, [(0, (0, (0, name, False), None)),
                                     (3, (0, (0, ALL_COLUMNS, False), None))])
    assert sql["from"] == {"table_units": [("table_unit", "__singer__"),
                                           ("table_unit", "__singer_in_concert__")],
                           "conds": [(False, 2, (0, (0, sid, False), None),
                                      (0, "__singer_in_concert.singer_id__", False), None)]}
    (cond,) = sql["where"]
    assert cond[:3] == (False, 3, (0, (0, "__singer.age__", False), None)) and isinstance(cond[3], dict)
    assert sql["groupBy"] == [(0, name, False)]
    assert sql["orderBy"] == ("desc", [(0, (3, ALL_COLUMNS, False), None)])
    assert sql["limit"] == 3 and sql["intersect"] is sql["union"] is sql["except"] is None


def test_unqualified_column_belongs_to_the_first_from_table_that_has_it(concert: Schema):
    sql = parse_sql("SELECT name FROM concert JOIN stadium ON concert.stadium_id = stadium.stadium_id",
                    concert)
    assert sql["select"][1][0][1][1][1] == "__stadium.name__"  # concert has no `name`, stadium has
    sql = parse_sql("SELECT stadium_id FROM concert JOIN stadium ON concert.stadium_id = stadium.stadium_id",
                    concert)
    assert sql["select"][1][0][1][1][1] == "__concert.stadium_id__"


def test_set_operations_nest_to_the_right(concert: Schema):
    sql = parse_sql("SELECT name FROM singer WHERE age > 40 UNION SELECT name FROM singer WHERE age < 30 "
                    "EXCEPT SELECT name FROM singer", concert)
    assert sql["union"] is not None and sql["union"]["except"] is not None and sql["except"] is None


@pytest.mark.parametrize(("sql", "message"), [
    ("SELECT T1.name FROM singer T1", "unknown table, alias or column 't1"),   # alias without AS
    ("SELECT count(*) AS n FROM singer", "Error col: as"),                      # column alias
    ("SELECT name FROM singer LEFT JOIN concert", "unknown table, alias or column 'left'"),
    ("SELECT name FROM singer, concert", "unknown table, alias or column ','"),
    ("SELECT name FROM singer WHERE age IS NULL", "Error col: null"),
    ("SELECT name FROM singer WHERE age IN (1, 2)", "')' expected after a value"),
    ("SELECT name FROM singer WHERE age=1", "Error col: age=1"),
    ("SELECT name FROM singer WHERE age <> 1", "Error col: >"),
    ("SELECT nickname FROM singer", "Error col: nickname"),
    ("SELECT name FROM singer LIMIT", "query ends too early"),
    ("SELECT 1", "'from' not found"),
    ("DELETE FROM singer", "'select' not found"),
    ("SELECT name FROM singer WHERE name = 'it's'", "Unexpected quote"),
    ("SELECT name FROM singer AS singer", "same name as a table"),
    ("", "query ends too early"),
])
def test_queries_the_official_parser_rejects(concert: Schema, sql, message):
    with pytest.raises(ParseError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_sql(sql, concert)


def test_tokens_after_the_query_are_ignored_as_upstream(concert: Schema):
    plain = parse_sql("SELECT name FROM singer ORDER BY age", concert)
    assert parse_sql("SELECT name FROM singer ORDER BY age NULLS LAST; DROP TABLE singer", concert) == plain


def test_empty_sql_has_every_clause():
    assert set(empty_sql()) == {"select", "from", "where", "groupBy", "having", "orderBy", "limit",
                                "intersect", "union", "except"}
