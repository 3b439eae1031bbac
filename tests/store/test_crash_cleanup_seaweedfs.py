"""kill -9 of a publisher mid multipart upload, then a rerun, on a real SeaweedFS (issue: crash debris).

What is measured: bytes under SeaweedFS's data directory (volumes, filer store), the growth of one
clean publish against the growth of a publish killed with SIGKILL mid-upload plus the successful
rerun. An aborted multipart upload's parts are only *marked* deleted in their volume; SeaweedFS
reclaims that space when it vacuums (compacts) the volume: by itself every
``-master.vacuumIntervalSeconds`` (840 s) once a volume's garbage ratio reaches
``-master.garbageThreshold`` (0.3). The test asks the master for that vacuum at once
(``/vol/vacuum``), as an operator would (README, "Artifact store").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.servers import SeaweedFS
from text2sql_core.store.gc import collect_garbage
from text2sql_core.store.manifest import MANIFEST_NAME, fetch, publish, read_manifest

MiB = 1024 * 1024
SIZE = 48 * MiB  # ten 5 MiB parts
BUCKET = "crash-cleanup"

#: the publisher that gets killed: a separate process, as a step's pod would be
_CHILD = """
import json, sys
from datetime import UTC, datetime
from pathlib import Path
from text2sql_core.store import open_store
from text2sql_core.store.config import StoreConfig
from text2sql_core.store.manifest import publish
store = open_store(StoreConfig.model_validate(json.loads(sys.argv[1])))
publish(store, sys.argv[2], Path(sys.argv[3]), run_id="r", step="sft", kind="sft", config_hash="h" * 64,
        metrics={}, started_at=datetime.now(UTC))
"""


def _output(path: Path) -> Path:
    (path / "model").mkdir(parents=True)
    with open(path / "model" / "model.safetensors", "wb") as f:
        f.writelines(os.urandom(8 * MiB) for _ in range(SIZE // (8 * MiB)))
    (path / "config.json").write_text("{}")
    return path


def _vacuum(server: SeaweedFS) -> None:
    """Compact every volume with any garbage (the master's periodic job, run now)."""
    url = f"http://{server.ip}:{server.ports['master.port']}/vol/vacuum?garbageThreshold=0.0001"
    with urllib.request.urlopen(url, timeout=120) as resp:
        assert resp.status == 200


def _settled_bytes(server: SeaweedFS) -> int:
    """The data directory's size once it stopped changing (volume and filer writes land asynchronously)."""
    last = server.data_bytes()
    for _ in range(50):
        time.sleep(0.2)
        now = server.data_bytes()
        if now == last:
            return now
        last = now
    return last


def _incomplete_uploads(server: SeaweedFS) -> list[str]:
    page = server.s3.client()._list_multipart_uploads(BUCKET)
    return [u.object_name for u in page.uploads]


@pytest.mark.slow
def test_kill_9_mid_multipart_publish_then_rerun_leaves_no_debris(seaweedfs_factory, tmp_path: Path) -> None:
    server: SeaweedFS = seaweedfs_factory(tls=False)
    store = server.s3.open(BUCKET, part_size_mb=5, multipart_workers=2)
    store.put_bytes("warmup", b"the bucket and its volumes exist now")
    before_clean = _settled_bytes(server)

    clean = publish(store, "runs/r/clean", _output(tmp_path / "clean"), run_id="r", step="clean", kind="sft",
                    config_hash="h" * 64, metrics={}, started_at=datetime.now(UTC))
    before_crash = _settled_bytes(server)
    clean_growth = before_crash - before_clean
    assert clean_growth >= SIZE

    prefix = "runs/r/sft"
    out = _output(tmp_path / "crash")
    cfg = {"kind": "s3", "s3": store.cfg.model_dump(mode="json")}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(cfg), prefix, str(out)],
                             env={**os.environ, **server.s3.environ()}, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while server.data_bytes() - before_crash < 15 * MiB:  # three parts are in
        assert child.poll() is None, f"publisher ended before the kill: {child.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "the upload never got going"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert read_manifest(store, prefix) is None
    assert store.debris(prefix), "the kill came after the multipart upload completed"
    assert _incomplete_uploads(server)

    # the rerun publishes, and on the way aborts the killed attempt's upload
    m = publish(store, prefix, out, run_id="r", step="sft", kind="sft", config_hash="h" * 64, metrics={},
                started_at=datetime.now(UTC))
    assert _incomplete_uploads(server) == []
    keys = sorted(i.key for i in store.list(prefix))
    assert keys == sorted([f"{prefix}/{MANIFEST_NAME}", *(f"{prefix}/{f.path}" for f in m.files)])  # no temp files
    gc = collect_garbage(store, "r")
    assert gc.debris == [] and gc.unreferenced == []  # nothing left for `t2s store gc`
    unvacuumed = _settled_bytes(server) - before_crash

    # the filer hands the aborted parts' chunks to the volume servers for deletion in the background,
    # so one vacuum can come before they are marked deleted: vacuum as a cron would, until it settles
    def like_a_clean_publish(growth: int) -> bool:
        return abs(growth - clean_growth) <= 0.10 * clean_growth

    deadline = time.monotonic() + 90
    while True:
        _vacuum(server)
        crash_growth = _settled_bytes(server) - before_crash
        if like_a_clean_publish(crash_growth) or time.monotonic() > deadline:
            break
        time.sleep(2.0)
    print(f"SeaweedFS growth: clean publish {clean_growth / MiB:.1f} MiB; killed publish + rerun "
          f"{unvacuumed / MiB:.1f} MiB before vacuum, {crash_growth / MiB:.1f} MiB after")
    assert like_a_clean_publish(crash_growth), (clean_growth, unvacuumed, crash_growth)
    assert read_manifest(store, "runs/r/clean") == clean
    fetch(store, prefix, tmp_path / "fetched", manifest=m)  # the vacuum kept what is live (sha256 checked)
