"""Atomic publish, manifests and verified fetch, on every backend."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from text2sql_core import __version__
from text2sql_core.errors import BadInput, ChecksumMismatch
from text2sql_core.store import ArtifactNotFound, ArtifactStore, LocalStore
from text2sql_core.store.manifest import MANIFEST_NAME, Manifest, code_version, fetch, publish, read_manifest

STARTED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def _output(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _publish(store: ArtifactStore, prefix: str, local: Path, **kw) -> Manifest:
    args = {"run_id": "r1", "step": "sft", "kind": "sft", "config_hash": "c0ffee", "metrics": {"loss": 0.5},
            "started_at": STARTED}
    args.update(kw)
    return publish(store, prefix, local, **args)


FILES = {"model/weights.bin": os.urandom(50_000), "tokenizer.json": b'{"v": 1}', "empty": b""}


def test_publish_writes_manifest_listing_every_file(store: ArtifactStore, tmp_path: Path) -> None:
    out = _output(tmp_path / "out", FILES)
    m = _publish(store, "runs/r1/sft", out, extra={"inputs": {"prepare": "abc"}})
    assert [f.path for f in m.files] == sorted(FILES)
    for f in m.files:
        assert f.size == len(FILES[f.path])
        assert f.sha256 == hashlib.sha256(FILES[f.path]).hexdigest()
    assert (m.run_id, m.step, m.kind, m.config_hash) == ("r1", "sft", "sft", "c0ffee")
    assert m.metrics == {"loss": 0.5} and m.extra == {"inputs": {"prepare": "abc"}}
    assert m.started_at == STARTED and m.finished_at >= STARTED
    assert m.code_version.startswith(__version__)

    raw = json.loads(store.get_bytes(f"runs/r1/sft/{MANIFEST_NAME}"))
    assert set(raw) >= {"run_id", "step", "kind", "config_hash", "code_version", "files", "metrics",
                        "started_at", "finished_at"}
    assert read_manifest(store, "runs/r1/sft") == m
    assert [o.key for o in store.list("runs/r1/sft")] == sorted(
        [f"runs/r1/sft/{rel}" for rel in FILES] + [f"runs/r1/sft/{MANIFEST_NAME}"])


def test_fetch_round_trip_verifies_and_resumes(store: ArtifactStore, tmp_path: Path) -> None:
    out = _output(tmp_path / "out", FILES)
    published = _publish(store, "runs/r1/sft", out)
    dst = tmp_path / "in"
    assert fetch(store, "runs/r1/sft", dst, workers=2) == published
    for rel, data in FILES.items():
        assert (dst / rel).read_bytes() == data
    assert not (dst / MANIFEST_NAME).exists()

    # resume: verified local files are not downloaded again, so removing them from the store is harmless
    store.delete("runs/r1/sft/model/weights.bin")
    fetch(store, "runs/r1/sft", dst)
    # ... but a local file with the wrong content is downloaded again
    (dst / "tokenizer.json").write_bytes(b'{"v": 2}')
    fetch(store, "runs/r1/sft", dst)
    assert (dst / "tokenizer.json").read_bytes() == b'{"v": 1}'
    (dst / "model/weights.bin").write_bytes(b"truncated")  # its object is gone: the re-download must fail
    with pytest.raises(ArtifactNotFound):
        fetch(store, "runs/r1/sft", dst)


def test_fetch_detects_tampered_content(store: ArtifactStore, tmp_path: Path) -> None:
    out = _output(tmp_path / "out", FILES)
    m = _publish(store, "runs/r1/sft", out)
    store.put_bytes("runs/r1/sft/tokenizer.json", b'{"v": 9}')  # same size, different bytes
    expected = next(f for f in m.files if f.path == "tokenizer.json")
    with pytest.raises(ChecksumMismatch) as info:
        fetch(store, "runs/r1/sft", tmp_path / "in")
    msg = str(info.value)
    assert "tokenizer.json" in msg and expected.sha256 in msg
    assert hashlib.sha256(b'{"v": 9}').hexdigest() in msg
    assert info.value.exit_code == 2
    # the bad file never appears under its final name, and no temp file is left
    assert not (tmp_path / "in" / "tokenizer.json").exists()
    assert not [p for p in (tmp_path / "in").rglob("*") if ".t2s-" in p.name]


def test_fetch_detects_truncated_content(store: ArtifactStore, tmp_path: Path) -> None:
    out = _output(tmp_path / "out", FILES)
    _publish(store, "runs/r1/sft", out)
    store.put_bytes("runs/r1/sft/model/weights.bin", FILES["model/weights.bin"][:1000])
    with pytest.raises(ChecksumMismatch, match=r"expected 50000 bytes .* got 1000 bytes"):
        fetch(store, "runs/r1/sft", tmp_path / "in")


def test_fetch_without_manifest_is_not_found(store: ArtifactStore, tmp_path: Path) -> None:
    store.put_bytes("runs/r1/sft/partial.bin", b"half an output, never published")
    assert read_manifest(store, "runs/r1/sft") is None
    with pytest.raises(ArtifactNotFound, match=MANIFEST_NAME):
        fetch(store, "runs/r1/sft", tmp_path / "in")


def test_corrupt_manifest_is_bad_input_naming_uri(store: ArtifactStore) -> None:
    store.put_bytes(f"runs/r1/sft/{MANIFEST_NAME}", b'{"run_id": "r1", "files": "nope"')
    with pytest.raises(BadInput, match="corrupt manifest") as info:
        read_manifest(store, "runs/r1/sft")
    assert store.uri_for(f"runs/r1/sft/{MANIFEST_NAME}") in str(info.value)


def test_republish_removes_stale_files_but_keeps_nested_publications(store: ArtifactStore,
                                                                     tmp_path: Path) -> None:
    _publish(store, "runs/r1/sft/_checkpoints/00000010", _output(tmp_path / "ckpt", {"state.pt": b"ckpt"}))
    store.put_bytes("runs/r1/sft/_checkpoints/00000020/state.pt", b"incomplete checkpoint, no manifest")
    _publish(store, "runs/r1/sft", _output(tmp_path / "v1", {"a.txt": b"1", "old/b.txt": b"2"}))
    m2 = _publish(store, "runs/r1/sft", _output(tmp_path / "v2", {"a.txt": b"one", "c.txt": b"3"}),
                  config_hash="beef")
    assert [o.key for o in store.list("runs/r1/sft")] == [
        "runs/r1/sft/_checkpoints/00000010/_manifest.json", "runs/r1/sft/_checkpoints/00000010/state.pt",
        f"runs/r1/sft/{MANIFEST_NAME}", "runs/r1/sft/a.txt", "runs/r1/sft/c.txt"]
    assert read_manifest(store, "runs/r1/sft") == m2
    assert store.get_bytes("runs/r1/sft/a.txt") == b"one"
    assert read_manifest(store, "runs/r1/sft/_checkpoints/00000010") is not None


def test_publish_refuses_reserved_manifest_name(store: ArtifactStore, tmp_path: Path) -> None:
    out = _output(tmp_path / "out", {"x.txt": b"x", f"sub/{MANIFEST_NAME}": b"{}"})
    with pytest.raises(BadInput, match="reserved"):
        _publish(store, "runs/r1/sft", out)
    assert store.list("runs/r1/sft") == []


class RecordingStore(LocalStore):
    """A real LocalStore that records the order of writes and can fail the Nth upload (a crash)."""

    def __init__(self, root: Path, fail_on_put: int | None = None) -> None:
        super().__init__(root)
        self.events: list[tuple[str, str]] = []
        self.fail_on_put = fail_on_put

    def put_file(self, local: Path, key: str) -> None:
        self.events.append(("put", key))
        if self.fail_on_put is not None and sum(e[0] == "put" for e in self.events) >= self.fail_on_put:
            raise OSError("simulated crash during upload")
        super().put_file(local, key)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.events.append(("put", key))
        super().put_bytes(key, data)

    def delete(self, key: str) -> bool:
        self.events.append(("delete", key))
        return super().delete(key)


def test_manifest_is_deleted_first_and_written_last(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "store")
    _publish(store, "runs/r1/sft", _output(tmp_path / "v1", {"a": b"1", "stale": b"s"}))
    store.events.clear()
    _publish(store, "runs/r1/sft", _output(tmp_path / "v2", {"a": b"2", "b": b"3"}))
    manifest_key = f"runs/r1/sft/{MANIFEST_NAME}"
    assert store.events[0] == ("delete", manifest_key)
    assert ("delete", "runs/r1/sft/stale") in store.events
    assert store.events.index(("delete", "runs/r1/sft/stale")) < store.events.index(("put", "runs/r1/sft/a"))
    assert store.events[-1] == ("put", manifest_key)


def test_crash_mid_publish_leaves_no_manifest(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "store")
    _publish(store, "runs/r1/sft", _output(tmp_path / "v1", {"a": b"1"}))
    assert read_manifest(store, "runs/r1/sft") is not None
    store.fail_on_put = 2
    with pytest.raises(OSError, match="simulated crash"):
        _publish(store, "runs/r1/sft", _output(tmp_path / "v2", {"a": b"2", "b": b"3", "c": b"4"}), workers=1)
    # the old manifest is gone, so it cannot describe the half-written new files
    assert read_manifest(store, "runs/r1/sft") is None
    store.fail_on_put = None
    m = _publish(store, "runs/r1/sft", tmp_path / "v2")
    assert [f.path for f in m.files] == ["a", "b", "c"]


def test_code_version_includes_env_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    code_version.cache_clear()
    monkeypatch.setenv("T2S_CODE_VERSION", "img-1.2.3")
    try:
        v = code_version()
        assert v.startswith(f"{__version__}+img-1.2.3")
    finally:
        code_version.cache_clear()
    monkeypatch.delenv("T2S_CODE_VERSION")
    assert code_version().startswith(__version__)
    assert "img-1.2.3" not in code_version()
    code_version.cache_clear()
