"""Logs are JSON lines off a TTY (or with T2S_LOG_FORMAT=json) and carry run and stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CODE = """
from text2sql_core.logging import bind_context, get_logger
bind_context(run="r1", stage="sft")
get_logger().info("hello", step=3)
"""


def test_json_lines_carry_run_and_stage() -> None:
    env = {**os.environ, "T2S_LOG_FORMAT": "json"}
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, check=True)
    rec = json.loads(r.stderr.strip().splitlines()[-1])
    assert rec["event"] == "hello" and rec["run"] == "r1" and rec["stage"] == "sft" and rec["step"] == 3
    assert rec["level"] == "info" and "timestamp" in rec


def test_console_format_is_not_json() -> None:
    env = {**os.environ, "T2S_LOG_FORMAT": "console"}
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, check=True)
    line = r.stderr.strip().splitlines()[-1]
    assert "hello" in line and "run=r1" in line and not line.startswith("{")
