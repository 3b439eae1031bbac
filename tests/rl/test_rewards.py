"""Execution verdicts against gold on the Spider sample, the reward per verdict, and the reward modes."""

from __future__ import annotations

import pytest

from text2sql_core.rl.rewards import ExecutionJudge, ExecutionRewards, Verdict, combine_rewards
from text2sql_core.sql.sandbox import SandboxPool


@pytest.fixture(scope="module")
def judge(spider_sample):
    return ExecutionJudge(spider_sample / "database")


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT name, country, age FROM singer ORDER BY age DESC", Verdict.MATCH),
    ("select Name ,Country, Age from singer order by Age desc;", Verdict.MATCH),  # spelling does not matter
    ("SELECT country, name, age FROM singer ORDER BY age DESC", Verdict.MATCH),  # column order does not
    ("SELECT name, country, age FROM singer ORDER BY age ASC", Verdict.MISMATCH),  # gold orders: row order counts
    ("SELECT name, country FROM singer ORDER BY age DESC", Verdict.MISMATCH),
    ("SELECT nme FROM singer", Verdict.ERROR),
    ("DROP TABLE singer", Verdict.ERROR),
    ("", Verdict.ERROR),
])
def test_verdicts_follow_spider_ex(judge, sql, expected):
    gold = "SELECT name ,  country ,  age FROM singer ORDER BY age DESC"
    assert judge.verdict("concert_singer", gold, sql) is expected


def test_row_order_is_free_without_order_by(judge):
    gold = "SELECT name FROM singer WHERE age > 30"
    assert judge.verdict("concert_singer", gold, "SELECT name FROM singer WHERE age > 30 ORDER BY name DESC") \
        is Verdict.MATCH


def test_a_failing_gold_query_makes_every_candidate_an_error(judge):
    assert judge.verdict("concert_singer", "SELECT nothing FROM nowhere", "SELECT 1") is Verdict.ERROR


def test_pool_gives_the_same_verdicts(spider_sample, judge):
    items = [("pets_1", "SELECT count(*) FROM pets", "SELECT count(*) FROM pets"),
             ("pets_1", "SELECT count(*) FROM pets", "SELECT count(*) FROM student"),
             ("pets_1", "SELECT count(*) FROM pets", "SELECT count(*) FROM pet")]
    with SandboxPool(1) as pool:
        pooled = ExecutionJudge(spider_sample / "database", pool=pool).verdicts(items)
    assert pooled == judge.verdicts(items) == [Verdict.MATCH, Verdict.MISMATCH, Verdict.ERROR]


def test_execution_rewards_and_modes():
    rewards = ExecutionRewards()
    assert [rewards(v) for v in (Verdict.MATCH, Verdict.MISMATCH, Verdict.ERROR)] == [1.0, 0.0, -0.5]
    assert combine_rewards("rm", [0.3, -1.0], None) == [0.3, -1.0]
    assert combine_rewards("execution", None, [1.0, -0.5]) == [1.0, -0.5]
    assert combine_rewards("hybrid", [0.3, -1.0], [1.0, -0.5], execution_weight=2.0) == [2.3, -2.0]
    with pytest.raises(ValueError, match="`hybrid` needs both"):
        combine_rewards("hybrid", [0.3], None)
    with pytest.raises(ValueError, match="unknown reward mode `best`"):
        combine_rewards("best", [0.3], [1.0])
