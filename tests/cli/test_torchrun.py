"""``t2s torchrun`` keeps a worker's exit code 2, which plain torchrun reports as 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

T2S = [sys.executable, "-m", "text2sql_core.cli"]


def test_bad_input_in_a_worker_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1]\n")
    plain = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "-m",
                            "text2sql_core.cli", "config", "validate", str(bad)], capture_output=True, text=True, check=False)
    assert plain.returncode == 1  # what the wrapper exists for
    r = subprocess.run([*T2S, "torchrun", "--nproc-per-node=2", "--", "config", "validate", str(bad)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2, r.stderr
    assert "seed:" in r.stderr


def test_success_and_usage_errors(tmp_path: Path) -> None:
    ok = subprocess.run([*T2S, "torchrun", "--nproc-per-node=2", "--", "stage", "list"], capture_output=True,
                        text=True, check=False)
    assert ok.returncode == 0 and ok.stdout.count("steps of this run") == 2  # one listing per worker
    r = subprocess.run([*T2S, "torchrun", "--nproc-per-node=2", "stage", "list"], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "usage: t2s torchrun" in r.stderr
