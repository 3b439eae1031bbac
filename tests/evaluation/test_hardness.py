"""Hardness levels: the official level of every sample gold query, and the quirks that define them."""

from __future__ import annotations

from pathlib import Path

import pytest

from text2sql_core.evaluation.hardness import hardness, nested_queries
from text2sql_core.evaluation.parse import parse_sql
from text2sql_core.evaluation.schema import Schema

from .conftest import read_oracle


def test_every_gold_level_matches_the_official(spider_sample: Path, gold, schemas: dict[str, Schema]):
    oracle = read_oracle(spider_sample, "dailsql_gpt4")
    levels = [hardness(parse_sql(g.sql, schemas[g.db_id])) for g in gold]
    assert levels == [row["hardness"] for row in oracle]
    counts = {lv: levels.count(lv) for lv in set(levels)}
    assert counts == {"easy": 76, "medium": 140, "hard": 59, "extra": 62}


@pytest.mark.parametrize(("sql", "level"), [
    ("SELECT count(*) FROM singer", "easy"),
    ("SELECT name FROM singer WHERE age > 20", "easy"),
    ("SELECT name, age FROM singer", "medium"),                               # two select columns
    ("SELECT name FROM singer WHERE age > 20 AND country = 'x'", "medium"),    # two conditions
    ("SELECT name FROM singer WHERE age > 20 ORDER BY age LIMIT 1", "hard"),   # three components
    ("SELECT name FROM singer WHERE age > (SELECT avg(age) FROM singer)", "hard"),  # one nested query
    ("SELECT name FROM singer UNION SELECT name FROM singer WHERE age > 3 ORDER BY name", "hard"),
    ("SELECT name, age FROM singer UNION SELECT name, age FROM singer", "extra"),
    # quirk: a NOT condition counts as an aggregate (two of them: "medium" would be "hard" otherwise)
    ("SELECT name, age FROM singer WHERE age NOT BETWEEN 1 AND 2 AND age NOT BETWEEN 5 AND 6", "hard"),
    # quirk: in HAVING, the AND counts as an aggregate and the aggregates do not ("medium" otherwise)
    ("SELECT country FROM singer GROUP BY country HAVING count(*) > 1 AND count(*) < 5", "easy"),
])
def test_levels(schemas: dict[str, Schema], sql, level):
    assert hardness(parse_sql(sql, schemas["concert_singer"])) == level


def test_nested_queries_are_condition_values_then_set_operations(schemas: dict[str, Schema]):
    sql = parse_sql("SELECT name FROM singer WHERE age IN (SELECT age FROM singer) INTERSECT "
                    "SELECT name FROM singer", schemas["concert_singer"])
    nested = nested_queries(sql)
    assert len(nested) == 2 and nested[1] is sql["intersect"]
