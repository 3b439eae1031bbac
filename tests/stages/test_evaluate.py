"""The evaluate stage through the real runner: prepare's gold and databases, a predict step's JSONL."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from text2sql_core.config import RunConfig
from text2sql_core.errors import BadInput
from text2sql_core.stages.base import run_step, step_prefix
from text2sql_core.store import open_store
from text2sql_core.store.manifest import publish

from ..evaluation.conftest import read_oracle


def _cfg(tmp_path: Path, sample: Path, **evaluate: object) -> RunConfig:
    return RunConfig.model_validate({
        "run_id": "e1", "workdir": str(tmp_path / "work"),
        "store": {"kind": "local", "local": {"path": str(tmp_path / "store")}},
        "data": {"format": "spider", "train": str(sample / "dev.json"), "dev": str(sample / "dev.json"),
                 "tables": str(sample / "tables.json"), "db_dir": str(sample / "database"), "max_train": 2},
        "stages": {"evaluate": evaluate},
    })


def _publish_predictions(cfg: RunConfig, tmp_path: Path, rows: list[dict]) -> None:
    """What the predict_sft step publishes (its model run is not needed to evaluate its output)."""
    folder = tmp_path / "predict_out"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "predictions.sql").write_text("".join(r["prediction"] + "\n" for r in rows))
    publish(open_store(cfg.store), step_prefix(cfg.run_id, "predict_sft"), folder, run_id=cfg.run_id,
            step="predict_sft", kind="predict", config_hash=f"h{len(rows)}{rows[0]['prediction']}",
            metrics={}, started_at=datetime.now(UTC))


@pytest.fixture
def prepared(tmp_path: Path, spider_sample: Path) -> RunConfig:
    cfg = _cfg(tmp_path, spider_sample)
    run_step(cfg, "prepare")
    return cfg


def test_evaluate_step_publishes_official_scores(prepared: RunConfig, tmp_path: Path, spider_sample: Path):
    gold = [line.split("\t")[1] for line in (spider_sample / "dev_gold.sql").read_text().splitlines()]
    preds = (spider_sample / "predictions" / "dailsql_gpt4.sql").read_text().splitlines()
    # reversed on purpose: rows align by `index`, not by file order
    rows = [{"index": i, "db_id": db, "prediction": p}
            for i, (db, p) in enumerate(zip(gold, preds, strict=True))]
    _publish_predictions(prepared, tmp_path, rows[::-1])
    outcome = run_step(prepared, "evaluate_sft")
    m = outcome.manifest.metrics
    assert (m["n"], round(m["ex"], 3), round(m["em"], 3)) == (337, 0.825, 0.662)
    assert {f"{metric}_{level}" for metric in ("ex", "em") for level in ("easy", "medium", "hard", "extra")} \
        <= set(m)
    assert sorted(f.path for f in outcome.manifest.files) == ["per_example.tsv", "report.md", "scores.png",
                                                                "summary.json"]
    local = tmp_path / "published"
    open_store(prepared.store).get_tree(step_prefix(prepared.run_id, "evaluate_sft"), local)
    tsv = [line.split("\t") for line in (local / "per_example.tsv").read_text().splitlines()[1:]]
    oracle = read_oracle(spider_sample, "dailsql_gpt4")
    assert [(r[2], r[3], r[4]) for r in tsv] == [(o["hardness"], o["ex"], o["em"]) for o in oracle]
    assert run_step(prepared, "evaluate_sft").skipped  # same inputs, same config: nothing to redo


def test_misaligned_predictions_fail_the_step_as_bad_input(prepared: RunConfig, tmp_path: Path):
    _publish_predictions(prepared, tmp_path, [{"index": 0, "db_id": "pets_1", "prediction": "SELECT 1"}])
    with pytest.raises(BadInput, match="1 predictions for 337 gold examples"):
        run_step(prepared, "evaluate_sft")
