"""Execution accuracy: run gold and predicted SQL in the sandbox, compare results as the official does.

``results_equal`` is test-suite-sql-eval's denotation equality: the results are bags of rows; row
order counts only when the gold query says ``order by``; the predicted columns may be any
permutation of the gold columns. ``SQLRunner`` executes a batch of ``(database, sql)`` jobs once
each: identical jobs (every gold query, a prediction equal to its gold) share one execution.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Self

from ..sql import SandboxPool, SQLResult, execute

__all__ = ["SQLRunner", "bird_results_equal", "results_equal"]

Row = tuple[Any, ...]


def _unordered(row: Row) -> Row:
    # Same key as upstream: value text plus type name, so 1 and '1' sort apart.
    return tuple(sorted(row, key=lambda v: str(v) + str(type(v))))


def _column_candidates(gold: list[Row], pred: list[Row], ncols: int) -> list[list[int]]:
    """For each gold column, the predicted columns whose every value occurs in it.

    Upstream checks 20 random rows; checking all rows prunes more, never a column mapping that
    could make the results equal, so the verdict is the same and does not depend on chance.
    """
    gold_values = [{row[i] for row in gold} for i in range(ncols)]
    pred_values = [{row[j] for row in pred} for j in range(ncols)]
    return [[j for j in range(ncols) if pred_values[j] <= gold_values[i]] for i in range(ncols)]


def _permutations(candidates: list[list[int]]) -> Iterator[tuple[int, ...]]:
    """Injective choices of one candidate per gold column (a column permutation), depth first."""
    chosen: list[int] = []
    used: set[int] = set()

    def walk(i: int) -> Iterator[tuple[int, ...]]:
        if i == len(candidates):
            yield tuple(chosen)
            return
        for j in candidates[i]:
            if j not in used:
                used.add(j)
                chosen.append(j)
                yield from walk(i + 1)
                chosen.pop()
                used.discard(j)

    return walk(0)


def results_equal(gold: Sequence[Row], pred: Sequence[Row], *, order_matters: bool) -> bool:
    """Whether two results are the same denotation (test-suite-sql-eval's ``result_eq``)."""
    gold, pred = list(gold), list(pred)
    if not gold and not pred:
        return True
    if len(gold) != len(pred):
        return False
    ncols = len(gold[0])
    if len(pred[0]) != ncols:
        return False
    # Cheap necessary condition: the same rows once each row's values are sorted.
    gold_un, pred_un = [_unordered(r) for r in gold], [_unordered(r) for r in pred]
    if (gold_un != pred_un) if order_matters else (set(gold_un) != set(pred_un)):
        return False
    gold_set, gold_bag = set(gold), None
    for perm in _permutations(_column_candidates(gold, pred, ncols)):
        permuted = pred if ncols == 1 else [tuple(row[j] for j in perm) for row in pred]
        if order_matters:
            if permuted == gold:
                return True
        elif set(permuted) == gold_set:
            gold_bag = gold_bag if gold_bag is not None else Counter(gold)
            if Counter(permuted) == gold_bag:
                return True
    return False


def bird_results_equal(gold: Sequence[Row], pred: Sequence[Row]) -> bool:
    """BIRD's EX: the results are equal as *sets* of rows (order, duplicates and nothing else ignored)."""
    return set(gold) == set(pred)


class SQLRunner:
    """Executes ``(database, sql)`` jobs in the sandbox: a process pool, or in this process.

    ``workers=0`` runs in this process, one job after another (the benchmark's baseline);
    ``cache=False`` executes every job even when an identical one already ran. Use as a context
    manager: entering starts the pool's workers, which boot while the caller does other work.
    """

    def __init__(self, *, workers: int | None = None, timeout_s: float, row_cap: int, cache: bool = True,
                 progress: bool = False) -> None:
        self.timeout_s = timeout_s
        self.row_cap = row_cap
        self.cache = cache
        self.progress = progress
        self.executed = 0  # jobs actually sent to SQLite, for logs and the benchmark
        self._pool = SandboxPool(workers or _cpu_count()) if workers != 0 else None

    def __enter__(self) -> Self:
        if self._pool is not None:
            self._pool.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.close()

    def submit(self, jobs: Sequence[tuple[Path, str]]) -> Future[list[SQLResult]]:
        """Start ``run(jobs)`` and return at once: in a thread for a pool (its workers do the work),
        right here without one (the serial baseline stays serial)."""
        future: Future[list[SQLResult]] = Future()
        if self._pool is None:
            future.set_result(self.run(jobs))
            return future

        def work() -> None:
            try:
                future.set_result(self.run(jobs))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller by future.result()
                future.set_exception(exc)

        threading.Thread(target=work, name="sql-runner", daemon=True).start()
        return future

    def run(self, jobs: Sequence[tuple[Path, str]]) -> list[SQLResult]:
        """Results in job order."""
        if self.cache:
            unique = list(dict.fromkeys(jobs))
            results = dict(zip(unique, self._execute(unique), strict=True))
            return [results[job] for job in jobs]
        return self._execute(list(jobs))

    def _execute(self, jobs: list[tuple[Path, str]]) -> list[SQLResult]:
        self.executed += len(jobs)
        if self._pool is not None:
            return self._pool.run(jobs, timeout_s=self.timeout_s, row_cap=self.row_cap,
                                  progress="execute" if self.progress else False)
        from tqdm import tqdm

        return [execute(db, sql, timeout_s=self.timeout_s, row_cap=self.row_cap)
                for db, sql in tqdm(jobs, desc="execute", unit="query", file=sys.stderr, leave=False,
                                    disable=not self.progress)]


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
