"""Under torchrun every rank runs the step: one lease for the launch (rank 0), one publisher."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml


def test_two_ranks_share_one_lease_and_rank_0_publishes(tmp_path: Path, demo_data_dir: Path) -> None:
    d = demo_data_dir
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "run_id": "ranks", "workdir": str(tmp_path / "work"),
        "store": {"kind": "local", "local": {"path": str(tmp_path / "store")}},
        "data": {"train": str(d / "train.json"), "dev": str(d / "dev.json"), "tables": str(d / "tables.json"),
                 "db_dir": str(d / "database"), "max_train": 50, "max_dev": 10}}))
    r = subprocess.run([sys.executable, "-m", "text2sql_core.cli", "torchrun", "--nproc-per-node=2", "--", "stage",
                        "run", "prepare", "--config", str(config)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "another runner holds this step" not in r.stderr
    step = tmp_path / "store" / "runs" / "ranks" / "prepare"
    assert json.loads((step / "_manifest.json").read_text())["step"] == "prepare"
    assert not (step / "_lease.json").exists()
    assert r.stderr.count('"event": "step published"') + r.stdout.count('"event": "step published"') == 1
