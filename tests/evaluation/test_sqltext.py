"""Text rewrites before execution: DISTINCT removal, operator joining, statement counting, value plugging."""

from __future__ import annotations

import pytest

from text2sql_core.evaluation.sqltext import (
    exec_form,
    lex,
    plug_alternatives,
    replace_cur_year,
    statement_count,
)


def test_lexemes_give_back_the_text():
    sql = "SELECT \"a b\", 'it''s', [x y], `z` -- c;\nFROM t /* ; */ WHERE n = 1.5e3;"
    assert "".join(x.text for x in lex(sql)) == sql


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT DISTINCT name FROM t", "SELECT  name FROM t"),
    ("SELECT count(distinct name) FROM t", "SELECT count( name) FROM t"),
    ("SELECT T1.DISTINCT FROM t", "SELECT T1. FROM t"),                      # a word of its own, as sqlparse
    ("SELECT 'distinct', \"distinct\" FROM t -- distinct",) * 2,
    ("SELECT distinctive FROM t", "SELECT distinctive FROM t"),
    ("SELECT a FROM t WHERE a > = 1 AND b ! = 2", "SELECT a FROM t WHERE a >= 1 AND b != 2"),
])
def test_exec_form(sql, expected):
    assert exec_form(sql) == expected


def test_keep_distinct_keeps_it():
    assert exec_form("SELECT DISTINCT a FROM t", keep_distinct=True) == "SELECT DISTINCT a FROM t"


def test_cur_year():
    assert replace_cur_year("SELECT YEAR(CURDATE()) - 1") == "SELECT 2020- 1"


@pytest.mark.parametrize(("sql", "count"), [
    ("", 0), ("  \n", 0), ("-- only a comment", 0), (";", 0),
    ("SELECT 1", 1), ("SELECT 1;", 1), ("SELECT 1; ; -- done", 1), ("SELECT ';' FROM t", 1),
    ("SELECT 1; DROP TABLE t", 2), ("SELECT 1 /* ; */; DELETE FROM t -- x", 2),
])
def test_statement_count(sql, count):
    assert statement_count(sql) == count


def test_plug_alternatives_try_every_gold_value_in_every_slot():
    gold = "SELECT name FROM singer WHERE country = 'France' AND age > 20"
    alts = plug_alternatives(gold, "SELECT name FROM singer WHERE country = 'french' AND age > 2", limit=100)
    assert len(alts) == 4 and "SELECT name FROM singer WHERE country = 'France' AND age > 20" in alts
    assert plug_alternatives(gold, "SELECT name FROM singer", limit=100) == []
    assert len(plug_alternatives(gold, "SELECT 1, 2, 3, 4 FROM t", limit=5)) == 5
