"""Other weights published under the same ``store://models/<name>``, through the real CLI.

The library-level checks live in ``tests/models/test_loading.py``; this is what a user (or a fresh
Kubernetes pod) sees: ``t2s stage run`` of a step that loads the old adapter refuses with exit 2
naming both digests, and ``t2s pipeline run`` retrains on the new base instead of skipping.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from text2sql_core.config import load_run_config
from text2sql_core.graph import STEPS, step_names
from text2sql_core.models.config import TinyModelConfig
from text2sql_core.models.loading import read_model_ref, store_base_digest
from text2sql_core.models.tiny import build_tiny
from text2sql_core.stages.base import run_step
from text2sql_core.store import LocalStore
from text2sql_core.store.manifest import publish, read_manifest

BASE = "models/mini"
TEXTS = ["SELECT name FROM singer WHERE age > 30", "How many concerts are there in 2014?",
         "SELECT count(*) FROM concert WHERE year = 2014"] * 10
TINY = TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, vocab_size=300, seed=1)
#: the first steps of the graph, up to the first prediction (named from the graph, not typed)
PREPARE = next(s.name for s in STEPS if s.kind == "prepare")
SFT = next(s.name for s in STEPS if s.kind == "sft")
PREDICT = next(s.name for s in STEPS if s.kind == "predict" and s.model_from == SFT)


def _upload(store: LocalStore, src: Path) -> str:
    """Publish a Hugging Face directory as the store base, the way a user uploads one (with a manifest)."""
    publish(store, BASE, src, run_id="upload", step="upload", kind="model", config_hash="0" * 64, metrics={},
            started_at=datetime.now(UTC))
    digest = store_base_digest(store, BASE)
    assert digest is not None
    return digest


def _t2s(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "text2sql_core.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, check=False)


@pytest.mark.slow  # five CLI processes, each paying the torch/transformers/peft import (~10 s on 2 busy cores)
def test_reuploaded_base_refuses_the_old_adapter_and_the_pipeline_retrains(tmp_path: Path,
                                                                             demo_data_dir: Path) -> None:
    store = LocalStore(tmp_path / "store")
    build_tiny(TINY, TEXTS, tmp_path / "base-a")
    old = _upload(store, tmp_path / "base-a")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "run_id": "reup", "seed": 0, "workdir": str(tmp_path / "work"),
        "store": {"kind": "local", "local": {"path": str(tmp_path / "store")}},
        "data": {"train": str(demo_data_dir / "train.json"), "dev": str(demo_data_dir / "dev.json"),
                 "tables": str(demo_data_dir / "tables.json"), "db_dir": str(demo_data_dir / "database"),
                 "max_train": 8, "max_dev": 2},
        "model": {"path": f"store://{BASE}", "lora": {"r": 2, "alpha": 4, "dropout": 0.0}},
        "stages": {"sft": {"max_steps": 2, "batch_size": 2, "save_steps": 100, "logging_steps": 1,
                           "max_source_length": 64, "max_target_length": 16, "num_threads": 1},
                   "predict": {"limit": 2, "max_new_tokens": 4, "max_source_length": 64, "num_threads": 1}},
    }))
    # prepare in-process (it reads no model); sft through the CLI, as a Job runs it
    run_step(load_run_config(config), PREPARE)
    trained = _t2s("stage", "run", SFT, "--config", str(config), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    sft_prefix = f"runs/reup/{SFT}"
    trained_on = read_model_ref(tmp_path / "store" / sft_prefix)
    assert trained_on.base.digest == old and trained_on.adapters  # an adapter on the store base

    build_tiny(TINY.model_copy(update={"seed": 2}), TEXTS, tmp_path / "base-b")
    new = _upload(store, tmp_path / "base-b")
    assert new != old

    # (a) the prediction step would put the old adapter on the new base: exit 2, one line, both digests
    refused = _t2s("stage", "run", PREDICT, "--config", str(config), cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-3000:]
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    named = [line for line in lines if old in line and new in line]
    assert len(named) == 1 and named[0].startswith("t2s: error: "), refused.stderr
    assert sum(line.startswith("t2s: error") for line in lines) == 1  # the rest are the step's log lines
    assert "base weights changed" in named[0]

    # (b) the pipeline's sft hash covers the base's content: sft is retrained, not skipped, and the
    # prediction step then loads the new adapter onto the base it was trained on
    before = read_manifest(store, sft_prefix)
    again = _t2s("pipeline", "run", "--config", str(config), "--until", PREDICT, "--no-report", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    after = read_manifest(store, sft_prefix)
    assert before is not None and after is not None and after.config_hash != before.config_hash
    assert read_model_ref(tmp_path / "store" / sft_prefix).base.digest == new
    assert again.stdout.count("skipped (already published)") == 0
    ran = step_names()[: step_names().index(PREDICT) + 1]
    assert again.stdout.count(": published in ") == len(ran)
