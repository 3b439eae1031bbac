"""``t2s status`` exit codes tell the truth: rejected keys and corrupt manifests are not a green table."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.servers import on_seaweedfs, unique_name
from text2sql_core.cli import main
from text2sql_core.store import LocalStore


def test_corrupt_manifest_exits_2(tmp_path: Path, capsys) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("runs/r/prepare/_manifest.json", b"{not json")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"run_id": "r", "store": {"kind": "local", "local": {"path": str(store.root)}}}))
    assert main(["status", "--config", str(config)]) == 2
    captured = capsys.readouterr()
    assert "corrupt manifest" in captured.out and "corrupt manifest in step(s) prepare" in captured.err


@on_seaweedfs
def test_rejected_s3_keys_exit_2_naming_the_cause(seaweedfs, tmp_path: Path, monkeypatch, capsys) -> None:
    s3 = seaweedfs.s3
    bucket = unique_name("status")
    s3.open(bucket)._ensure_bucket()  # the bucket exists: only the keys are wrong
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"run_id": "r", "store": {"kind": "s3", "s3": {
        "endpoint": s3.endpoint, "bucket": bucket, "secure": False, "region": s3.region}}}))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert main(["status", "--config", str(config)]) == 2
    captured = capsys.readouterr()
    assert "rejected the credentials" in captured.err and "corrupt manifest" not in captured.out
