"""``jobs/stage STEP``: the one entrypoint script for other schedulers, passing the step through to
``t2s stage run`` with the mounted run config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.charts.render import REPO_ROOT

SCRIPT = REPO_ROOT / "jobs" / "stage"


def _run(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "T2S_CONFIG": str(config), "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(["sh", str(SCRIPT), *args], check=False, capture_output=True, text=True, env=env,
                          timeout=120)


def test_one_script_for_every_step_and_bad_steps_exit_2(tmp_path) -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert sorted(p.name for p in SCRIPT.parent.iterdir()) == ["README.md", "stage"]
    config = tmp_path / "run.yaml"
    config.write_text(f"run_id: jobs\nstore:\n  kind: local\n  local:\n    path: {tmp_path / 'store'}\n")
    usage = _run(config=config)
    assert usage.returncode == 2 and "usage: jobs/stage STEP" in usage.stderr
    unknown = _run("finetune", config=config)
    assert unknown.returncode == 2 and "finetune" in unknown.stderr
    # a real step against the mounted config: prepare without its dataset is bad input (exit 2)
    missing = _run("prepare", config=config)
    assert missing.returncode == 2, missing.stdout + missing.stderr
