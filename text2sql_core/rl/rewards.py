"""What a generated SQL query is worth: a weighted list of named reward terms.

Every RL algorithm scores its samples with :class:`RewardFunctions`, built from a list of
:class:`RewardTerm` (name, weight):

- ``execution``: run the query in the SQL sandbox and compare its result with the gold result under
  Spider EX semantics: ``match`` +1, a wrong result 0, an error (syntax, timeout, row cap...) a
  penalty (-0.5 by default), so that "runs but wrong" is preferred to "does not run";
- ``graded_execution``: Arctic-Text2SQL-R1's reward: 1 on a match, 0.1 when the query runs but is
  wrong, 0 otherwise (no negative reward, so group-normalised methods see no sign flip);
- ``syntax``: 1 when the query runs at all (a format term), else 0;
- ``rm``: the reward model's score of (prompt, response), read at the response's last token.

PPO's ``reward.mode`` (``rm``, ``execution``, ``hybrid``) is a shorthand for such a list.

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

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # pragma: no cover
    from ..sql.sandbox import SandboxPool, SQLResult

__all__ = [
    "TERM_NAMES",
    "ExecutionJudge",
    "ExecutionRewards",
    "RewardFunctions",
    "RewardMode",
    "RewardTerm",
    "Verdict",
    "terms_for_mode",
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


TermName = Literal["execution", "graded_execution", "syntax", "rm"]
TERM_NAMES: tuple[str, ...] = ("execution", "graded_execution", "syntax", "rm")

#: reward per verdict of the execution-based terms, unless a term overrides them
_DEFAULT_VALUES: dict[str, ExecutionRewards] = {
    "execution": ExecutionRewards(1.0, 0.0, -0.5),
    "graded_execution": ExecutionRewards(1.0, 0.1, 0.0),
    "syntax": ExecutionRewards(1.0, 1.0, 0.0),
}


class RewardTerm(BaseModel):
    """One named reward function and its weight in the sum."""

    model_config = ConfigDict(extra="forbid")

    name: TermName = Field(description="`execution` (match / mismatch / error values), `graded_execution` "
                                       "(1 / 0.1 / 0, as Arctic-Text2SQL-R1), `syntax` (1 when the SQL runs), "
                                       "`rm` (the reward model's score; adds the rm step to the graph).")
    weight: float = Field(1.0, description="Weight of this term in the summed reward.")
    match: float | None = Field(None, description="Reward on a result equal to gold (execution terms; "
                                                  "default per term).")
    mismatch: float | None = Field(None, description="Reward when the query runs but its result differs.")
    error: float | None = Field(None, description="Reward when the query does not run (error, timeout, row cap).")

    def values(self) -> ExecutionRewards:
        base = _DEFAULT_VALUES[self.name]
        return ExecutionRewards(base.match if self.match is None else self.match,
                                base.mismatch if self.mismatch is None else self.mismatch,
                                base.error if self.error is None else self.error)


def terms_for_mode(mode: RewardMode, *, execution_weight: float = 1.0, match: float = 1.0, mismatch: float = 0.0,
                   error: float = -0.5) -> list[RewardTerm]:
    """PPO's reward modes as term lists: ``rm``, ``execution``, ``hybrid`` (RM + weighted execution)."""
    execution = RewardTerm(name="execution", match=match, mismatch=mismatch, error=error)
    if mode == "rm":
        return [RewardTerm(name="rm")]
    if mode == "execution":
        return [execution]
    if mode == "hybrid":
        return [RewardTerm(name="rm"), execution.model_copy(update={"weight": execution_weight})]
    raise ValueError(f"unknown reward mode `{mode}`; use rm, execution or hybrid")


class RewardFunctions:
    """The weighted sum of reward terms, with the mean of each term for the logs.

    Execution-based terms share one sandbox run per query (the verdict); ``rm`` scores come from the
    caller, who holds the reward model.
    """

    def __init__(self, terms: Sequence[RewardTerm], judge: ExecutionJudge | None = None) -> None:
        if not terms:
            raise ValueError("the reward needs at least one term")
        self.terms = list(terms)
        self.judge = judge
        if self.needs_execution and judge is None:
            raise ValueError(f"reward terms {[t.name for t in self.terms if t.name != 'rm']} need an ExecutionJudge")

    @property
    def needs_execution(self) -> bool:
        return any(t.name != "rm" for t in self.terms)

    @property
    def needs_rm(self) -> bool:
        return any(t.name == "rm" for t in self.terms)

    def score(self, items: Sequence[tuple[str, str, str]], rm_scores: Sequence[float] | None = None
              ) -> tuple[list[float], dict[str, float]]:
        """Summed reward per ``(db_id, gold_sql, sql)`` item, and per-term / verdict means.

        Stats: ``reward_<term>`` per term, ``exec_match`` / ``exec_error`` (shares of verdicts) and
        ``rm_score`` when they apply.
        """
        n = len(items)
        totals = [0.0] * n
        stats: dict[str, float] = {}
        verdicts: list[Verdict] | None = None
        if self.needs_execution:
            assert self.judge is not None
            verdicts = self.judge.verdicts(list(items))
            stats["exec_match"] = sum(v is Verdict.MATCH for v in verdicts) / max(n, 1)
            stats["exec_error"] = sum(v is Verdict.ERROR for v in verdicts) / max(n, 1)
        if self.needs_rm:
            if rm_scores is None or len(rm_scores) != n:
                raise ValueError("an `rm` reward term needs one reward-model score per item")
            stats["rm_score"] = sum(float(s) for s in rm_scores) / max(n, 1)
        for term in self.terms:
            if term.name == "rm":
                values = [float(s) for s in rm_scores]  # type: ignore[union-attr]
            else:
                table = term.values()
                values = [table(v) for v in verdicts]  # type: ignore[union-attr]
            stats[f"reward_{term.name}"] = sum(values) / max(n, 1)
            for i, v in enumerate(values):
                totals[i] += term.weight * v
        return totals, stats
