"""Execution verdicts against gold on the Spider sample, the reward per verdict, the weighted reward terms."""

from __future__ import annotations

import pytest

from text2sql_core.rl.rewards import (
    ExecutionJudge,
    ExecutionRewards,
    RewardFunctions,
    RewardTerm,
    Verdict,
    terms_for_mode,
)
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


def test_execution_rewards_and_modes(judge):
    rewards = ExecutionRewards()
    assert [rewards(v) for v in (Verdict.MATCH, Verdict.MISMATCH, Verdict.ERROR)] == [1.0, 0.0, -0.5]
    gold = "SELECT count(*) FROM pets"
    items = [("pets_1", gold, gold), ("pets_1", gold, "SELECT count(*) FROM student"),
             ("pets_1", gold, "SELECT count(*) FROM pet")]  # match, mismatch, error
    rm = [0.3, -1.0, 2.0]
    assert RewardFunctions(terms_for_mode("rm")).score(items, rm)[0] == rm
    assert RewardFunctions(terms_for_mode("execution"), judge).score(items)[0] == [1.0, 0.0, -0.5]
    hybrid, stats = RewardFunctions(terms_for_mode("hybrid", execution_weight=2.0), judge).score(items, rm)
    assert hybrid == [2.3, -1.0, 1.0]
    assert stats["exec_match"] == pytest.approx(1 / 3) and stats["exec_error"] == pytest.approx(1 / 3)
    assert stats["rm_score"] == pytest.approx(1.3 / 3)
    with pytest.raises(ValueError, match="unknown reward mode `best`"):
        terms_for_mode("best")  # type: ignore[arg-type]


def test_weighted_terms_graded_execution_and_syntax(judge):
    gold = "SELECT count(*) FROM pets"
    items = [("pets_1", gold, gold), ("pets_1", gold, "SELECT count(*) FROM student"),
             ("pets_1", gold, "SELECT count(*) FROM pet")]
    terms = [RewardTerm(name="graded_execution"), RewardTerm(name="syntax", weight=0.5)]
    totals, stats = RewardFunctions(terms, judge).score(items)
    assert totals == pytest.approx([1.0 + 0.5, 0.1 + 0.5, 0.0])  # Arctic: 1 / 0.1 / 0; syntax: it runs
    assert stats["reward_graded_execution"] == pytest.approx(1.1 / 3)
    assert stats["reward_syntax"] == pytest.approx(2 / 3)
    custom = RewardTerm(name="execution", match=2.0, error=-1.0)
    assert RewardFunctions([custom], judge).score(items)[0] == [2.0, 0.0, -1.0]


def test_reward_terms_need_what_they_score(judge):
    with pytest.raises(ValueError, match="need an ExecutionJudge"):
        RewardFunctions([RewardTerm(name="execution")])
    with pytest.raises(ValueError, match="one reward-model score per item"):
        RewardFunctions([RewardTerm(name="rm")]).score([("pets_1", "SELECT 1", "SELECT 1")])
    with pytest.raises(ValueError, match="at least one term"):
        RewardFunctions([])
