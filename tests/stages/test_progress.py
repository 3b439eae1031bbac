"""Training progress reaches progress.jsonl and the Prometheus endpoint of the pod."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CODE = """
import sys, time
from pathlib import Path
from text2sql_core.logging import bind_context, get_logger
from text2sql_core.stages.progress import ProgressReporter
bind_context(run="r9", stage="sft")
rep = ProgressReporter(Path(sys.argv[1]), log=get_logger())
rep.report(step=5, total=10, loss=0.25, tokens_per_s=1234.0)
print("ready", flush=True)
time.sleep(20)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_progress_file_and_metrics_endpoint(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "T2S_METRICS_PORT": str(port), "T2S_LOG_FORMAT": "json"}
    path = tmp_path / "progress.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", CODE, str(path)], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        body = ""
        for _ in range(50):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert 't2s_train_step{run="r9",stage="sft"} 5.0' in body
        assert 't2s_train_loss{run="r9",stage="sft"} 0.25' in body
        assert 't2s_train_tokens_per_second{run="r9",stage="sft"} 1234.0' in body
    finally:
        proc.kill()
        proc.wait()
    rec = json.loads(path.read_text().splitlines()[0])
    assert rec["step"] == 5 and rec["loss"] == 0.25
