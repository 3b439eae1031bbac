"""What a generated SQL query is worth: the reward model's score, execution against gold, or both.

Three reward modes (``reward.mode`` of the ppo stage):

- ``rm``: the reward model's score of (prompt, response), read at the response's last token;
- ``execution``: run the query in the SQL sandbox and compare its result with the gold result under
  Spider EX semantics: ``match`` scores +1, a wrong result 0, an error (syntax, timeout, row cap...) a
  penalty (-0.5 by default), so that "runs but wrong" is preferred to "does not run";
- ``hybrid``: the RM score plus ``execution_weight`` times the execution reward.

:class:`ExecutionJudge` is also what ``rm_data`` uses to decide that a sampled candidate or a
perturbation is *wrong* (its result differs from gold), so pair mining and the PPO reward agree on
what "correct" means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover
    from ..sql.sandbox import SandboxPool, SQLResult

__all__ = [
    "ExecutionJudge",
    "ExecutionRewards",
    "RewardMode",
    "Verdict",
    "combine_rewards",
]

RewardMode = Literal["rm", "execution", "hybrid"]


class Verdict(str, Enum):
    """How a query's execution compares with the gold query's."""

    MATCH = "match"
    MISMATCH = "mismatch"  # ran, different result
    ERROR = "error"  # did not run (syntax, denied, timeout, row cap, runtime)


def _order_matters(gold_sql: str) -> bool:
    """Spider's rule: row order counts only when the gold query has an ORDER BY."""
    return "order by" in " ".join(gold_sql.lower().split())


@dataclass
class ExecutionJudge:
    """Runs queries in the SQL sandbox and compares them with gold; gold results are cached.

    The comparison is the evaluator's Spider EX (:func:`text2sql_core.evaluation.execution.results_equal`),
    so a reward of 1 means exactly what EX counts as correct.

    ``database_dir`` holds ``<db_id>/<db_id>.sqlite`` (the layout ``prepare`` publishes). With a
    :class:`~text2sql_core.sql.sandbox.SandboxPool` the queries run in watched worker processes;
    without one they run in this process (fine for gold queries and perturbations of them).
    """

    database_dir: Path
    timeout_s: float = 5.0
    row_cap: int = 10_000
    pool: SandboxPool | None = None

    def __post_init__(self) -> None:
        self.database_dir = Path(self.database_dir)
        self._gold: dict[tuple[str, str], SQLResult] = {}

    def db_path(self, db_id: str) -> Path:
        return self.database_dir / db_id / f"{db_id}.sqlite"

    def _execute(self, jobs: Sequence[tuple[str, str]]) -> list[SQLResult]:
        from ..sql.sandbox import execute

        if self.pool is not None:
            return self.pool.run([(self.db_path(db), sql) for db, sql in jobs], timeout_s=self.timeout_s,
                                 row_cap=self.row_cap)
        return [execute(self.db_path(db), sql, timeout_s=self.timeout_s, row_cap=self.row_cap)
                for db, sql in jobs]

    def gold_result(self, db_id: str, gold_sql: str) -> SQLResult:
        key = (db_id, gold_sql)
        if key not in self._gold:
            self._gold[key] = self._execute([key])[0]
        return self._gold[key]

    def verdicts(self, items: Sequence[tuple[str, str, str]]) -> list[Verdict]:
        """``(db_id, gold_sql, sql)`` triples -> verdicts, in order.

        A gold query that itself fails makes every candidate for it an ``ERROR`` (nothing can match).
        """
        from ..evaluation.execution import results_equal

        results = self._execute([(db, sql) for db, _, sql in items])
        out: list[Verdict] = []
        for (db, gold_sql, _), result in zip(items, results, strict=True):
            gold = self.gold_result(db, gold_sql)
            if not result.ok or not gold.ok:
                out.append(Verdict.ERROR)
            elif results_equal(gold.rows, result.rows, order_matters=_order_matters(gold_sql)):
                out.append(Verdict.MATCH)
            else:
                out.append(Verdict.MISMATCH)
        return out

    def verdict(self, db_id: str, gold_sql: str, sql: str) -> Verdict:
        return self.verdicts([(db_id, gold_sql, sql)])[0]


@dataclass(frozen=True)
class ExecutionRewards:
    """Reward per verdict; the defaults prefer a wrong result to a query that does not run."""

    match: float = 1.0
    mismatch: float = 0.0
    error: float = -0.5

    def __call__(self, verdict: Verdict) -> float:
        return {Verdict.MATCH: self.match, Verdict.MISMATCH: self.mismatch, Verdict.ERROR: self.error}[verdict]


def combine_rewards(mode: RewardMode, rm_scores: Sequence[float] | None,
                    execution: Sequence[float] | None, execution_weight: float = 1.0) -> list[float]:
    """The sequence-level reward of each response for ``mode`` (before clipping and the KL term)."""
    if mode == "rm":
        if rm_scores is None:
            raise ValueError("reward mode `rm` needs reward-model scores")
        return [float(s) for s in rm_scores]
    if mode == "execution":
        if execution is None:
            raise ValueError("reward mode `execution` needs execution rewards")
        return [float(e) for e in execution]
    if mode == "hybrid":
        if rm_scores is None or execution is None:
            raise ValueError("reward mode `hybrid` needs both reward-model scores and execution rewards")
        return [float(s) + execution_weight * float(e) for s, e in zip(rm_scores, execution, strict=True)]
    raise ValueError(f"unknown reward mode `{mode}`; use rm, execution or hybrid")
