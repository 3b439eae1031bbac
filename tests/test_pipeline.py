"""The main job: every step as a subprocess, in order; skip on rerun; stop at the first failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from text2sql_core.graph import step_names
from text2sql_core.store import open_store
from text2sql_core.store.config import StoreConfig
from text2sql_core.store.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]


def _spider_sample_config(tmp_path: Path, spider_sample: Path) -> Path:
    doc = yaml.safe_load((REPO / "examples" / "spider-sample.yaml").read_text())
    doc["workdir"] = str(tmp_path / "work")
    doc["store"]["local"]["path"] = str(tmp_path / "store")
    for key in ("train", "dev"):
        doc["data"][key] = str(spider_sample / "dev.json")
    doc["data"]["tables"] = str(spider_sample / "tables.json")
    doc["data"]["db_dir"] = str(spider_sample / "database")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _t2s(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "text2sql_core.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=1200, check=False)


@pytest.mark.slow
def test_pipeline_end_to_end_on_real_spider_schemas(tmp_path: Path, spider_sample: Path) -> None:
    config = _spider_sample_config(tmp_path, spider_sample)
    r = _t2s("pipeline", "run", "--config", str(config), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    report = Path(next(line for line in r.stdout.splitlines() if line.startswith("report: ")).removeprefix("report: "))
    assert report.is_file() and (report.parent / "report.png").is_file()
    text = report.read_text()
    assert "| easy |" in text and "Pairwise accuracy" in text and "By origin of the rejected answer" in text
    store = open_store(StoreConfig.model_validate({"kind": "local", "local": {"path": str(tmp_path / "store")}}))
    manifests = {s: read_manifest(store, f"runs/spider-sample/{s}") for s in step_names()}
    assert all(m is not None for m in manifests.values()), [s for s, m in manifests.items() if m is None]
    assert manifests["prepare"].metrics["dev_examples"] == 64
    assert manifests["evaluate_rl"].metrics["n"] == 64
    assert 0.0 <= manifests["evaluate_rl"].metrics["ex"] <= 1.0
    # a rerun finds every step published and skips it
    again = _t2s("pipeline", "run", "--config", str(config), "--no-report", cwd=tmp_path)
    assert again.returncode == 0
    assert again.stdout.count("skipped (already published)") == len(step_names())


def test_pipeline_stops_at_a_bad_input_with_exit_2(tmp_path: Path, spider_sample: Path) -> None:
    config = _spider_sample_config(tmp_path, spider_sample)
    doc = yaml.safe_load(config.read_text())
    doc["data"]["tables"] = str(tmp_path / "missing-tables.json")
    config.write_text(yaml.safe_dump(doc))
    r = _t2s("pipeline", "run", "--config", str(config), cwd=tmp_path)
    assert r.returncode == 2
    assert "missing-tables.json" in r.stderr and "step 'prepare' failed with exit code 2" in r.stderr
    assert f"[2/{len(step_names())}]" not in r.stderr  # nothing after the failed step started
    assert not (tmp_path / "store" / "runs" / "spider-sample" / "prepare" / "_manifest.json").exists()
