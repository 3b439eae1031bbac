"""The ``evaluate`` stage: Spider EX / EM of a predict step's SQL, with the official semantics.

Reads the ``prepare`` step (``dev_gold.sql``, ``tables.json``, ``database/``) and the predict step
named in the step's inputs (``predictions.jsonl``, else ``predictions.sql``). Publishes
``per_example.tsv``, ``summary.json``, ``report.md`` and ``scores.png`` (see ``evaluation/report.py``)
and returns ``{ex, em, ex_<level>, em_<level>, n}`` as the step's metrics.

A WikiSQL run (``data.format: wikisql``) is scored with WikiSQL's semantics instead
(``evaluation/wikisql.py``) on the dev split the prepare step kept in its ``wikisql/`` folder: ``ex``
by execution, ``em`` WikiSQL's logical-form accuracy. WikiSQL has no hardness levels (every query is
one table, one column, conditions joined by AND), so there are no ``ex_<level>``/``em_<level>``, and
no chart; the Spider-only settings (``metric``, ``etype``, ``plug_value``, ``keep_distinct``) are
refused by the run config.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..errors import BadInput
from .base import Stage, StageConfigBase, StageContext

__all__ = ["STAGE", "EvaluateConfig", "run"]


class EvaluateConfig(StageConfigBase):
    """Evaluation settings; the defaults are the official evaluator's (published numbers use them)."""

    # What is scored
    etype: Literal["all", "exec", "match"] = Field(
        "all", description="Execution accuracy (exec), exact set match (match), or both (all).")
    metric: Literal["spider", "bird"] = Field(
        "spider", description="EX as test-suite-sql-eval defines it (spider), or BIRD's set comparison "
                              "(bird).")
    plug_value: bool = Field(
        False, description="Also try the gold query's values in the prediction's value slots (official "
                           "--plug_value); off by default, as in published results.")
    keep_distinct: bool = Field(
        False, description="Do not ignore DISTINCT: queries run as written and EM tells count(DISTINCT x) "
                           "from count(x) (the official --keep_distinct changes execution only).")
    # Execution limits
    timeout_s: float = Field(30.0, gt=0,
                             description="Per-query time limit in seconds; a timeout scores wrong.")
    row_cap: int = Field(100_000, ge=1,
                         description="Largest result a query may return; a larger one scores wrong.")
    workers: int | None = Field(None, ge=1, description="SQL worker processes; default: one per CPU core.")


def _predictions_file(folder: Path, step: str) -> Path:
    for name in ("predictions.jsonl", "predictions.sql"):
        if (folder / name).is_file():
            return folder / name
    raise BadInput(f"upstream step {step!r} published neither predictions.jsonl nor predictions.sql",
                   uri=str(folder))


def _run_wikisql(ctx: StageContext, prepared: Path, predictions_path: Path) -> dict[str, Any]:
    from ..data.wikisql import read_questions, read_tables
    from ..evaluation.inputs import load_predictions
    from ..evaluation.wikisql import evaluate_wikisql, write_wikisql_outputs
    from .prepare import WIKISQL_DIR

    cfg: EvaluateConfig = ctx.config
    folder = prepared / WIKISQL_DIR
    if not (folder / "dev.jsonl").is_file():
        raise BadInput(f"the prepare step published no {WIKISQL_DIR}/dev.jsonl: it did not prepare WikiSQL data; "
                       "rerun it with `data.format: wikisql`", stage=ctx.step.name, uri=str(folder))
    tables = read_tables(folder / "dev.tables.jsonl")
    questions = read_questions(folder / "dev.jsonl", tables)
    predictions = load_predictions(predictions_path, expected=len(questions))
    for i, (q, p) in enumerate(zip(questions, predictions, strict=True)):
        if p.db_id is not None and p.db_id != q.table_id:
            raise BadInput(f"prediction {i} was made for table {p.db_id!r}, but dev question {i} asks about "
                           f"table {q.table_id!r}: the predictions are not aligned with the prepared dev split",
                           uri=str(predictions_path), record=i, field="db_id")
    result = evaluate_wikisql(questions, tables, [p.sql for p in predictions], db_path=folder / "dev.db",
                              gold_path=folder / "dev.jsonl", timeout_s=cfg.timeout_s, row_cap=cfg.row_cap,
                              workers=cfg.workers)
    write_wikisql_outputs(result, ctx.output_dir)
    metrics = result.summary()
    ctx.log.info("evaluation done", **metrics)
    return metrics


def run(ctx: StageContext) -> dict[str, Any]:
    from ..evaluation.api import evaluate
    from ..evaluation.inputs import load_gold, load_predictions
    from ..evaluation.report import write_outputs

    cfg: EvaluateConfig = ctx.config
    prepare_name = "prepare"
    predict_names = [name for name in ctx.step.inputs if name != prepare_name]
    if prepare_name not in ctx.step.inputs or len(predict_names) != 1:
        raise BadInput("an evaluate step reads 'prepare' and one predict step; got inputs "
                       f"{list(ctx.step.inputs)}", stage=ctx.step.name)
    prepared = ctx.input(prepare_name)
    predicted = ctx.input(predict_names[0])
    if ctx.run_config.data.format == "wikisql":
        return _run_wikisql(ctx, prepared, _predictions_file(predicted, predict_names[0]))
    gold = load_gold(prepared / "dev_gold.sql")
    predictions = load_predictions(_predictions_file(predicted, predict_names[0]), expected=len(gold))
    result = evaluate(
        gold, predictions, db_dir=prepared / "database", tables=prepared / "tables.json",
        etype=cfg.etype, metric=cfg.metric, plug_value=cfg.plug_value, keep_distinct=cfg.keep_distinct,
        timeout_s=cfg.timeout_s, row_cap=cfg.row_cap, workers=cfg.workers, progress=sys.stderr.isatty())
    write_outputs(result, ctx.output_dir,
                  title=f"{ctx.step.name}: {cfg.metric} EX / EM of {predict_names[0]}'s {result.n} predictions")
    ctx.log.info("evaluation done", **result.metrics())
    return result.metrics()


STAGE = Stage(name="evaluate", config_cls=EvaluateConfig, run=run,
              description="Spider EX / EM (official semantics) of a predict step's SQL; WikiSQL's "
                          "with data.format wikisql.")
