"""The predict stage through the real runner: aligned outputs, determinism, real Spider schemas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from text2sql_core.config import RunConfig
from text2sql_core.errors import BadInput
from text2sql_core.models.generation import EMPTY_PREDICTION, clean_sql
from text2sql_core.sql.sandbox import execute
from text2sql_core.stages.base import run_step
from text2sql_core.stages.predict import read_dev_prompts

from ..training_fixtures import TrainedRun


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_predictions_are_aligned_with_the_dev_set_and_greedy_is_deterministic(sft_undertrained: TrainedRun,
                                                                             tmp_path: Path) -> None:
    cfg = sft_undertrained.clone(tmp_path, stages={"predict": {"batch_size": 48, "max_new_tokens": 64}})
    outcome = run_step(cfg, "predict_sft")
    out = tmp_path / "store" / "runs" / cfg.run_id / "predict_sft"
    rows = _jsonl(out / "predictions.jsonl")
    meta = _jsonl(sft_undertrained.prepare_dir / "dev_meta.jsonl")
    gold = (sft_undertrained.prepare_dir / "dev_gold.sql").read_text().splitlines()
    sql_lines = (out / "predictions.sql").read_text().split("\n")
    assert sql_lines[-1] == "" and len(sql_lines) - 1 == len(rows) == len(meta) == len(gold)
    assert all(line.strip() for line in sql_lines[:-1])  # no blank line can shift the alignment
    for row, m, line in zip(rows, meta, sql_lines, strict=False):
        assert (row["index"], row["db_id"]) == (m["index"], m["db_id"])
        assert row["prediction"] == line == clean_sql(row["raw"])
        assert "\n" not in row["prediction"]
    assert outcome.manifest.metrics["predictions"] == len(rows)
    # the under-trained policy already writes SQL and stops on its own, not at the token budget
    assert outcome.manifest.metrics["stopped_at_eos"] > 0.5 * len(rows)
    assert sum(r["prediction"].startswith("SELECT") and r["prediction"] != EMPTY_PREDICTION for r in rows) \
        > 0.5 * len(rows)

    again = run_step(cfg, "predict_sft", force=True)
    assert not again.skipped
    assert _jsonl(out / "predictions.jsonl") == rows


@pytest.mark.slow
def test_prepare_sft_predict_evaluate_on_real_spider_schemas(spider_sample: Path, tmp_path: Path) -> None:
    cfg = RunConfig.model_validate({
        "run_id": "spider", "seed": 0, "workdir": str(tmp_path / "work"),
        "store": {"kind": "local", "local": {"path": str(tmp_path / "store")}},
        "data": {"train": str(spider_sample / "dev.json"), "dev": str(spider_sample / "dev.json"),
                 "tables": str(spider_sample / "tables.json"), "db_dir": str(spider_sample / "database"),
                 "max_dev": 24},
        "model": {"path": "tiny", "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4,
                                           "intermediate_size": 128, "vocab_size": 2000}},
        "stages": {"sft": {"max_steps": 30, "batch_size": 16, "save_steps": 30, "logging_steps": 10},
                   "predict": {"batch_size": 24, "max_new_tokens": 48}},
    })
    for step in ("prepare", "sft", "predict_sft", "evaluate_sft"):
        outcome = run_step(cfg, step)
    assert 0.0 <= outcome.manifest.metrics["ex"] <= 1.0
    sft = tmp_path / "store" / "runs" / "spider" / "sft"
    log = _jsonl(sft / "loss_log.jsonl")
    assert log[-1]["loss"] < log[0]["loss"]
    preds = (tmp_path / "store" / "runs" / "spider" / "predict_sft" / "predictions.sql").read_text().splitlines()
    assert len(preds) == 24

    # execution-guided decoding: where the greedy SQL fails to run, the best beam that runs replaces it
    greedy = _jsonl(tmp_path / "store" / "runs" / "spider" / "predict_sft" / "predictions.jsonl")
    guided_cfg = cfg.model_copy(update={"stages": cfg.stages.model_copy(update={
        "predict": cfg.stages.predict.model_copy(update={"execution_guided": 4})})})
    metrics = run_step(guided_cfg, "predict_sft").manifest.metrics
    guided = _jsonl(tmp_path / "store" / "runs" / "spider" / "predict_sft" / "predictions.jsonl")
    db_dir = tmp_path / "store" / "runs" / "spider" / "prepare" / "database"

    def runs(row: dict) -> bool:
        return execute(db_dir / row["db_id"] / f"{row['db_id']}.sqlite", row["prediction"]).ok

    failing = [n for n, row in enumerate(greedy) if not runs(row)]
    assert metrics["execution_guided_failing"] == len(failing) > 0  # an under-trained model breaks some SQL
    changed = [n for n, (a, b) in enumerate(zip(greedy, guided, strict=True)) if a["prediction"] != b["prediction"]]
    assert set(changed) <= set(failing)  # SQL that runs is never touched
    assert len(changed) == metrics["execution_guided_replaced"]
    assert all(runs(guided[n]) for n in changed)
    assert all(row["prediction"] == clean_sql(row["raw"]) for row in guided)


def test_dev_prompts_must_be_aligned(tmp_path: Path) -> None:
    (tmp_path / "dev_flat.jsonl").write_text('{"prompt": "a", "output": "x"}\n{"prompt": "b", "output": "y"}\n')
    (tmp_path / "dev_meta.jsonl").write_text('{"index": 0, "db_id": "d"}\n')
    with pytest.raises(BadInput, match="not aligned"):
        read_dev_prompts(tmp_path)
    (tmp_path / "dev_meta.jsonl").write_text('{"index": 0, "db_id": "d"}\n{"index": 1}\n')
    with pytest.raises(BadInput, match=r"dev_meta.jsonl, record line 2, field `db_id`"):
        read_dev_prompts(tmp_path)
    (tmp_path / "dev_meta.jsonl").write_text('{"index": 0, "db_id": "d"}\n{"index": 1, "db_id": "e"}\n')
    assert read_dev_prompts(tmp_path) == [(0, "d", "a"), (1, "e", "b")]
