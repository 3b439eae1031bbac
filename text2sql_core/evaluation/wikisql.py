"""WikiSQL scoring: execution accuracy with WikiSQL's semantics, and logical-form accuracy.

EX runs the gold logical form the way WikiSQL's engine does (``col<i>`` names, condition text
lower-cased, values of ``real`` columns as numbers) and the prediction with header names mapped back
to ``col<i>`` and string literals lower-cased (``data/wikisql.prediction_sql``), both through the
sandbox, and compares the results as bags of cells: text case-insensitively, numbers as numbers
(``'23'`` equals ``23.0``). EM is WikiSQL's logical-form accuracy: the prediction parsed back into
``(sel, agg, conds)`` equals the gold, conditions as a set; a prediction of another shape scores 0.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.dataset import write_files_atomically
from ..data.wikisql import (
    WikiQuestion,
    WikiTable,
    execution_sql,
    parse_logical_form,
    prediction_sql,
    result_key,
)
from ..errors import BadInput

__all__ = ["WikiResult", "WikiScore", "evaluate_wikisql", "format_wikisql", "write_wikisql_outputs"]


@dataclass(frozen=True)
class WikiScore:
    line: int
    table_id: str
    ex: bool
    em: bool
    error: str


@dataclass(frozen=True)
class WikiResult:
    examples: tuple[WikiScore, ...]
    seconds: float

    @property
    def n(self) -> int:
        return len(self.examples)

    @property
    def ex(self) -> float:
        return sum(e.ex for e in self.examples) / self.n

    @property
    def em(self) -> float:
        return sum(e.em for e in self.examples) / self.n

    def summary(self) -> dict[str, Any]:
        return {"n": self.n, "metric": "wikisql", "ex": self.ex, "em": self.em,
                "examples_with_error": sum(1 for e in self.examples if e.error), "seconds": round(self.seconds, 3)}


def _run(jobs: list[tuple[Path, str]], *, timeout_s: float, row_cap: int, workers: int | None) -> list[Any]:
    from ..sql.sandbox import SandboxPool, execute

    if workers == 0:
        return [execute(db, sql, timeout_s=timeout_s, row_cap=row_cap) for db, sql in jobs]
    with SandboxPool(workers) as pool:
        return pool.run(jobs, timeout_s=timeout_s, row_cap=row_cap)


def evaluate_wikisql(questions: list[WikiQuestion], tables: dict[str, WikiTable], predictions: list[str], *,
                     db_path: Path, gold_path: Path, timeout_s: float = 30.0, row_cap: int = 100_000,
                     workers: int | None = None) -> WikiResult:
    """Score ``predictions`` (aligned with ``questions``) on WikiSQL's database ``db_path``."""
    if len(predictions) != len(questions):
        raise BadInput(f"{len(predictions)} predictions for {len(questions)} questions: they must align one to one")
    started = time.perf_counter()
    jobs: list[tuple[Path, str]] = []
    for q, pred in zip(questions, predictions, strict=True):
        table = tables[q.table_id]
        jobs += [(db_path, execution_sql(q.form, table)), (db_path, prediction_sql(pred, table))]
    results = _run(jobs, timeout_s=timeout_s, row_cap=row_cap, workers=workers)
    scores = []
    for k, (q, pred) in enumerate(zip(questions, predictions, strict=True)):
        gold, mine = results[2 * k], results[2 * k + 1]
        if not gold.ok:
            raise BadInput(f"the gold logical form does not run on the database: {gold.error}", uri=str(gold_path),
                           record=f"line {q.line}")
        ex = mine.ok and result_key(mine.rows) == result_key(gold.rows)
        form = parse_logical_form(pred, tables[q.table_id])
        em = form is not None and form.key() == q.form.key()
        error = "" if mine.ok else f"{mine.error_kind.value}: {mine.error}"
        if not pred.strip():
            error = "empty prediction"
        scores.append(WikiScore(q.line, q.table_id, bool(ex), em, error))
    return WikiResult(tuple(scores), time.perf_counter() - started)


def format_wikisql(result: WikiResult) -> str:
    return (f"{'':20} {'all':20}\n{'count':20} {result.n:<20d}\n"
            f"{'execution':20} {result.ex:<20.3f}\n{'logical form':20} {result.em:<20.3f}\n")


def write_wikisql_outputs(result: WikiResult, out_dir: str | Path) -> dict[str, Path]:
    """``per_example.tsv``, ``summary.json`` (``ex``, ``em`` = logical-form accuracy) and ``report.md``, at once."""
    out = Path(out_dir)
    tsv = ["line\ttable_id\tex\tem\terror"]
    tsv += [f"{e.line}\t{e.table_id}\t{int(e.ex)}\t{int(e.em)}\t{e.error.replace(chr(9), ' ')}"
            for e in result.examples]
    report = ["# WikiSQL evaluation", "", f"{result.n} questions.", "",
              "| count | execution (EX) | logical form (EM) |", "| ---: | ---: | ---: |",
              f"| {result.n} | {result.ex:.3f} | {result.em:.3f} |", ""]
    files: dict[Path, str | bytes] = {
        out / "per_example.tsv": "\n".join(tsv) + "\n",
        out / "summary.json": json.dumps(result.summary(), indent=2) + "\n",
        out / "report.md": "\n".join(report),
    }
    write_files_atomically(files)
    return {p.name: p for p in files}
