"""Run config: validation errors with field paths, no secrets in YAML, the JSON Schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from text2sql_core.config import RunConfig, load_run_config, run_config_schema
from text2sql_core.errors import BadInput


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_defaults_validate() -> None:
    cfg = RunConfig()
    assert cfg.run_id == "demo" and cfg.store.kind == "local"


def test_every_error_reported_with_path(tmp_path: Path) -> None:
    p = _write(tmp_path, "run_id: Bad_Id\nseed: x\nstages:\n  sft:\n    no_such_knob: 1\n")
    with pytest.raises(BadInput) as exc:
        load_run_config(p)
    msg = str(exc.value)
    assert str(p) in msg
    assert "run_id:" in msg and "seed:" in msg and "stages.sft.no_such_knob:" in msg


def test_secrets_rejected(tmp_path: Path) -> None:
    p = _write(tmp_path, "store:\n  kind: s3\n  s3:\n    endpoint: x:9000\n    bucket: b\n    secret_key: hunter2\n")
    with pytest.raises(BadInput, match="secrets are never read") as exc:
        load_run_config(p)
    assert "hunter2" not in str(exc.value)


def test_missing_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="not found"):
        load_run_config(tmp_path / "nope.yaml")
    with pytest.raises(BadInput, match="not valid YAML"):
        load_run_config(_write(tmp_path, "a: [1, 2\n"))


def test_schema_is_json_schema() -> None:
    schema = run_config_schema()
    assert schema["type"] == "object"
    assert {"run_id", "store", "data", "model", "stages"} <= set(schema["properties"])
    assert schema.get("additionalProperties") is False


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    good = _write(tmp_path, "run_id: ok-run\n")
    r = subprocess.run([sys.executable, "-m", "text2sql_core.cli", "config", "validate", str(good)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1]\nmodel:\n  dtype: float7\n")
    r = subprocess.run([sys.executable, "-m", "text2sql_core.cli", "config", "validate", str(bad)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert "seed:" in r.stderr and "model.dtype:" in r.stderr
    r = subprocess.run([sys.executable, "-m", "text2sql_core.cli", "config", "schema"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and json.loads(r.stdout)["title"] == "text2sql-rlhf run config"
