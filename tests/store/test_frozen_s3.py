"""A frozen S3 server (accepts connections, never answers) fails a step with exit 1, within the deadline."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from text2sql_core.errors import Retryable
from text2sql_core.store.config import S3StoreConfig
from text2sql_core.store.s3 import S3Credentials, S3Store


@pytest.fixture
def frozen_endpoint() -> Iterator[str]:
    """host:port of a server that takes every connection and never sends a byte (like a SIGSTOPped one)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    t.join()
    for c in held:
        c.close()
    server.close()


def test_frozen_server_is_retryable_within_the_configured_deadline(frozen_endpoint: str) -> None:
    cfg = S3StoreConfig(endpoint=frozen_endpoint, bucket="frozen", secure=False, region="us-east-1",
                        read_timeout_s=0.5, connect_timeout_s=0.5, max_retries=1)
    store = S3Store(cfg, credentials=S3Credentials("k", "s"))
    started = time.monotonic()
    with pytest.raises(Retryable, match="frozen|cannot reach|timed out|failed"):
        store.get_bytes("runs/r/prepare/_manifest.json")
    assert time.monotonic() - started < 10


def test_default_deadline_is_well_under_a_job_deadline() -> None:
    cfg = S3StoreConfig(endpoint="s3.example.com", bucket="my-bucket")
    worst = (cfg.max_retries + 1) * (cfg.connect_timeout_s + cfg.read_timeout_s) + cfg.max_retries * 5
    assert worst <= 180


def test_stage_run_against_a_frozen_store_exits_1(frozen_endpoint: str, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"run_id": "r", "store": {"kind": "s3", "s3": {
        "endpoint": frozen_endpoint, "bucket": "frozen", "secure": False, "region": "us-east-1",
        "read_timeout_s": 0.5, "connect_timeout_s": 0.5, "max_retries": 1}}}))
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "text2sql_core.cli", "stage", "run", "prepare", "--config",
                        str(config)], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert r.returncode == 1, r.stderr[-2000:]
    assert time.monotonic() - started < 60
    assert "t2s: error:" in r.stderr
