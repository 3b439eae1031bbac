"""What sft shows on a terminal: one progress bar with an ETA; no Trainer dicts, no checkpoint-shard bars."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import yaml

from text2sql_core.config import RunConfig
from text2sql_core.stages.base import run_step


def _run_on_a_terminal(cmd: list[str], env: dict[str, str], timeout_s: float = 300) -> str:
    """Run ``cmd`` with stdout and stderr on a pseudo-terminal; return everything it wrote there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    proc = subprocess.Popen(cmd, env=env, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout_s)
            if not ready:
                raise AssertionError("no output for too long")
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        proc.wait(timeout=60)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_sft_draws_one_bar_and_no_duplicate_or_shard_lines(tmp_path: Path, demo_data_dir: Path) -> None:
    cfg = RunConfig.model_validate({
        "run_id": "console", "seed": 0, "workdir": str(tmp_path / "work"),
        "store": {"kind": "local", "local": {"path": str(tmp_path / "store")}},
        "data": {"train": str(demo_data_dir / "train.json"), "dev": str(demo_data_dir / "dev.json"),
                 "tables": str(demo_data_dir / "tables.json"), "db_dir": str(demo_data_dir / "database"),
                 "max_train": 64, "max_dev": 8},
        "model": {"path": "tiny", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                           "intermediate_size": 64, "vocab_size": 600}},
        "stages": {"sft": {"max_steps": 12, "batch_size": 4, "save_steps": 4, "logging_steps": 4,
                           "num_threads": 1}},
    })
    run_step(cfg, "prepare")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {**os.environ, "T2S_LOG_FORMAT": "json"}
    out = _run_on_a_terminal([sys.executable, "-m", "text2sql_core.cli", "stage", "run", "sft", "--config",
                              str(config)], env)
    assert "sft: 100%" in out and "12/12" in out and "loss=" in out  # the bar, with its ETA field and loss
    assert "Writing model shards" not in out  # two checkpoints and the final model were written
    assert "{'loss'" not in out and "'epoch'" not in out and "train_runtime" not in out
