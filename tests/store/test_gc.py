"""Clean-up after crashes: publish removes earlier attempts' debris; ``t2s store gc`` sweeps a run."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from text2sql_core.store import LocalStore
from text2sql_core.store.gc import collect_garbage
from text2sql_core.store.lease import LEASE_NAME, StepLease
from text2sql_core.store.manifest import publish
from text2sql_core.store.s3 import S3Store

MiB = 1024 * 1024


def _publish(store, prefix: str, src: Path):
    return publish(store, prefix, src, run_id="r", step="sft", kind="sft", config_hash="h" * 64, metrics={},
                   started_at=datetime.now(UTC))


def _out(tmp_path: Path, name: str = "out") -> Path:
    out = tmp_path / name
    (out / "model").mkdir(parents=True)
    (out / "model" / "weights.bin").write_bytes(os.urandom(1024))
    (out / "config.json").write_text("{}")
    return out


def _leave_debris(store, key: str) -> None:
    """What a writer killed mid-upload leaves: a temp file (local) or an incomplete multipart upload (S3)."""
    if isinstance(store, LocalStore):
        from text2sql_core.store.local import _tmp_in

        path = store.root / key
        fd, _ = _tmp_in(path.parent, path.name)  # the very temp file put_file writes into
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * MiB)
    else:
        assert isinstance(store, S3Store)
        obj = store._obj(key)
        store._ensure_bucket()
        upload_id = store._client._create_multipart_upload(store.bucket, obj, {})
        store._client._upload_part(store.bucket, obj, b"\0" * 5 * MiB, None, upload_id, 1)


def test_publish_removes_debris_of_killed_attempts(store, tmp_path: Path) -> None:
    _leave_debris(store, "runs/r/sft/model/weights.bin")
    _leave_debris(store, "runs/r/sft/_checkpoints/00000001/state.pt")
    _leave_debris(store, "runs/r/predict/out.jsonl")  # another step's: not this publish's business
    assert len(store.debris("runs/r/sft")) == 2
    assert store.list("runs/r/sft") == []  # invisible to list(), which is why it used to stay forever
    _publish(store, "runs/r/sft", _out(tmp_path))
    assert store.debris("runs/r/sft") == []
    assert len(store.debris("runs/r/predict")) == 1


def test_gc_lists_then_removes_what_no_manifest_references(store, tmp_path: Path) -> None:
    _publish(store, "runs/r/sft", _out(tmp_path))
    _publish(store, "runs/r/sft/_checkpoints/00000002", _out(tmp_path, "ck"))
    store.put_bytes("runs/r/sft/stray.bin", b"x" * 10)                   # an older output's file
    store.put_bytes("runs/r/sft/_checkpoints/00000003/state.pt", b"y")   # a checkpoint killed before its manifest
    store.put_bytes(f"runs/r/rm/{LEASE_NAME}", json.dumps({               # a lease whose holder died long ago
        "owner": "pod gone", "host": "h", "pid": 1, "token": "t", "started": 0.0, "heartbeat": 0.0}).encode())
    _leave_debris(store, "runs/r/rm/model.bin")
    store.put_bytes("runs/other/sft/keep.bin", b"z")                     # another run: untouched
    kept = {i.key for i in store.list("runs/r")} - {"runs/r/sft/stray.bin",
                                                    "runs/r/sft/_checkpoints/00000003/state.pt",
                                                    f"runs/r/rm/{LEASE_NAME}"}

    dry = collect_garbage(store, "r")
    assert sorted(k for k, _ in dry.unreferenced) == sorted([
        "runs/r/sft/stray.bin", "runs/r/sft/_checkpoints/00000003/state.pt", f"runs/r/rm/{LEASE_NAME}"])
    assert len(dry.debris) == 1 and dry.removed == 0
    assert store.exists("runs/r/sft/stray.bin")  # a dry run removes nothing

    done = collect_garbage(store, "r", delete=True)
    assert done.removed == 4
    assert {i.key for i in store.list("runs/r")} == kept
    assert store.debris("runs/r") == [] and store.exists("runs/other/sft/keep.bin")
    assert collect_garbage(store, "r").unreferenced == []


def test_gc_skips_a_step_with_a_live_lease(store) -> None:
    with StepLease(store, "runs/r/sft", ttl_s=60, heartbeat_s=10, owner="pod live"):
        store.put_bytes("runs/r/sft/in-flight.bin", b"x")
        report = collect_garbage(store, "r", delete=True, now=time.time())
        assert report.skipped_live == ["sft"] and report.unreferenced == []
        assert store.exists("runs/r/sft/in-flight.bin")


def test_store_gc_command(tmp_path: Path, capsys) -> None:
    import yaml

    from text2sql_core.cli import main

    root = tmp_path / "store"
    store = LocalStore(root)
    _publish(store, "runs/r/sft", _out(tmp_path))
    store.put_bytes("runs/r/sft/stray.bin", b"x" * 10)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"run_id": "r", "store": {"kind": "local", "local": {"path": str(root)}}}))
    assert main(["store", "gc", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "would remove: " in out and "stray.bin (10 bytes" in out and "--delete" in out
    assert store.exists("runs/r/sft/stray.bin")
    assert main(["store", "gc", "--config", str(config), "--run-id", "r", "--delete"]) == 0
    assert "removed: " in capsys.readouterr().out and not store.exists("runs/r/sft/stray.bin")
