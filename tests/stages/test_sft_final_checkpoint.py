"""A resume at the final checkpoint (killed after it, before the manifest) keeps the real final loss."""

from __future__ import annotations

import json
from pathlib import Path

from text2sql_core.config import RunConfig
from text2sql_core.stages.base import run_step


def test_resume_at_the_final_checkpoint_reports_the_loss(tmp_path: Path, demo_data_dir: Path) -> None:
    d = demo_data_dir
    cfg = RunConfig.model_validate({
        "run_id": "final", "seed": 0, "workdir": str(tmp_path / "work"),
        "store": {"kind": "local", "local": {"path": str(tmp_path / "store")}},
        "data": {"train": str(d / "train.json"), "dev": str(d / "dev.json"), "tables": str(d / "tables.json"),
                 "db_dir": str(d / "database"), "max_train": 100, "max_dev": 10},
        "model": {"path": "tiny", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                           "intermediate_size": 64, "vocab_size": 600}},
        # logging_steps beyond max_steps: the Trainer alone would log nothing
        "stages": {"sft": {"max_steps": 4, "batch_size": 4, "save_steps": 4, "logging_steps": 50,
                           "num_threads": 1}},
    })
    run_step(cfg, "prepare")
    first = run_step(cfg, "sft").manifest.metrics
    assert first["final_loss"] > 0
    step_dir = tmp_path / "store" / "runs" / "final" / "sft"
    (step_dir / "_manifest.json").unlink()  # as if killed after the final checkpoint, before publishing
    again = run_step(cfg, "sft").manifest.metrics
    assert again["resumed_from_step"] == 4 and again["steps"] == 4
    assert again["final_loss"] == first["final_loss"]
    log = [json.loads(line) for line in (step_dir / "loss_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [4]
