"""Denotation equality as test-suite-sql-eval defines it, BIRD's set equality, and the cached SQL runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from text2sql_core.evaluation.execution import SQLRunner, bird_results_equal, results_equal

ROWS = [(1, "a", 2.5), (2, "b", None), (2, "b", None)]


@pytest.mark.parametrize(("gold", "pred", "order_matters", "equal"), [
    ([], [], False, True),
    (ROWS, ROWS, True, True),
    (ROWS, list(reversed(ROWS)), False, True),                    # a bag: row order is free...
    (ROWS, list(reversed(ROWS)), True, False),                    # ...unless the gold has ORDER BY
    (ROWS, [(c, b, a) for a, b, c in ROWS], False, True),         # columns in any order
    (ROWS, [(c, b, a) for a, b, c in ROWS], True, True),
    (ROWS, ROWS[:2], False, False),                               # duplicates count
    (ROWS, ROWS[:1] + ROWS[1:2] * 2, False, True),
    (ROWS, [ROWS[0], ROWS[0], ROWS[1]], False, False),            # same set, other multiplicities
    (ROWS, [r[:2] for r in ROWS], False, False),                  # a column less
    ([(1,)], [(1.0,)], False, True),                              # Python equality: 1 == 1.0
    ([(1,)], [("1",)], False, False),
    ([(1, 2), (3, 4)], [(1, 4), (3, 2)], False, False),           # per-row values must stay together
    ([(1, 1, 2, 3, 4)], [(4, 3, 2, 1, 1)], False, True),          # > 3 columns, repeated values
    ([(1, 2, 3, 4, 5), (6, 7, 8, 9, 10)], [(2, 1, 3, 4, 5), (6, 7, 8, 9, 10)], False, False),
])
def test_results_equal(gold, pred, order_matters, equal):
    assert results_equal(gold, pred, order_matters=order_matters) is equal


def test_many_interchangeable_columns_stay_fast():
    wide = [tuple([0] * 12)] * 3  # 12! permutations a naive search would try; all are equal here
    assert results_equal(wide, wide, order_matters=False)
    assert not results_equal(wide, [tuple([0] * 11 + [1])] * 3, order_matters=False)


def test_bird_compares_sets_of_rows():
    assert bird_results_equal(ROWS, ROWS[:2])                     # duplicates ignored
    assert bird_results_equal(ROWS, list(reversed(ROWS)))
    assert not bird_results_equal(ROWS, [(c, b, a) for a, b, c in ROWS])  # column order matters in BIRD


@pytest.mark.parametrize("workers", [0, 1])
def test_runner_executes_identical_jobs_once(spider_sample: Path, workers):
    db = spider_sample / "database" / "concert_singer" / "concert_singer.sqlite"
    jobs = [(db, "SELECT count(*) FROM singer"), (db, "SELECT max(age) FROM singer")] * 3
    with SQLRunner(workers=workers, timeout_s=5, row_cap=100) as runner:
        results = runner.run(jobs)
    assert [r.rows for r in results] == [((6,),), ((52,),)] * 3 and runner.executed == 2
    with SQLRunner(workers=workers, timeout_s=5, row_cap=100, cache=False) as runner:
        assert [r.rows for r in runner.run(jobs)] == [r.rows for r in results] and runner.executed == 6
