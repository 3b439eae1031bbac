"""``t2s pipeline run`` owns its step processes: a killed pipeline leaves no runner behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it holds nothing
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def test_run_child_passes_sigterm_to_the_whole_group(tmp_path: Path) -> None:
    """A child's own workers (same group) end with it when the pipeline is stopped."""
    pids = tmp_path / "pids"
    child = ("import subprocess, sys, time, pathlib\n"
             "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
             f"pathlib.Path({str(pids)!r}).write_text(str(w.pid))\n"
             "time.sleep(120)\n")
    driver = ("import sys\nfrom text2sql_core.pipeline import run_child\n"
              f"sys.exit(run_child([sys.executable, '-c', {child!r}], grace_s=5))\n")
    proc = subprocess.Popen([sys.executable, "-c", driver], env={**os.environ, "PYTHONPATH": str(REPO)})
    assert _wait_for(pids.exists, 60)
    worker = int(pids.read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert _wait_for(lambda: not _alive(worker), 10), "the step's worker outlived the pipeline"


def test_kill_9_of_the_pipeline_ends_its_step_and_frees_the_lease(tmp_path: Path, spider_sample: Path) -> None:
    doc = yaml.safe_load((REPO / "examples" / "spider-sample.yaml").read_text())
    doc["workdir"] = str(tmp_path / "work")
    doc["store"]["local"]["path"] = str(tmp_path / "store")
    for key in ("train", "dev"):
        doc["data"][key] = str(spider_sample / "dev.json")
    doc["data"]["tables"] = str(spider_sample / "tables.json")
    doc["data"]["db_dir"] = str(spider_sample / "database")
    doc["stages"]["sft"].update({"max_steps": 100000, "save_steps": 100000, "num_threads": 1})
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(doc))
    steps = ["prepare", "sft"]  # the first two steps of the default graph
    from text2sql_core.graph import topological

    assert [s.name for s in topological()][:2] == steps
    pipeline = subprocess.Popen([sys.executable, "-m", "text2sql_core.cli", "pipeline", "run", "--config",
                                 str(config), "--steps", ",".join(steps), "--no-report"], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lease = tmp_path / "store" / "runs" / doc["run_id"] / "sft" / "_lease.json"
    try:
        assert _wait_for(lease.exists, 240), "sft never started"
        runner = json.loads(lease.read_text())["pid"]
        assert _alive(runner)
    finally:
        pipeline.kill()
        pipeline.wait()
    assert _wait_for(lambda: not _alive(runner), 30), "the sft runner outlived a kill -9 of the pipeline"
    assert not lease.exists(), "the runner ended without releasing its lease"
