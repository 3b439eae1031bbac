"""Local backend specifics: where relative paths land, atomic writes, empty directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from text2sql_core.store import LocalStore, StoreConfig, open_store
from text2sql_core.store.local import atomic_write_bytes


def test_open_store_resolves_relative_path_against_base_dir(tmp_path: Path) -> None:
    store = open_store(StoreConfig(local={"path": "art/store"}), base_dir=tmp_path)
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / "art" / "store"
    assert store.uri == (tmp_path / "art" / "store").as_uri()
    store.put_bytes("runs/r1/x", b"x")
    assert (tmp_path / "art" / "store" / "runs" / "r1" / "x").read_bytes() == b"x"


def test_open_store_defaults_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store(StoreConfig())
    assert isinstance(store, LocalStore) and store.root == tmp_path / ".t2s" / "store"
    absolute = open_store(StoreConfig(local={"path": str(tmp_path / "abs")}), base_dir=Path("/elsewhere"))
    assert absolute.root == tmp_path / "abs"


def test_temp_files_of_interrupted_writes_are_invisible(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("runs/r1/a.bin", b"a")
    # what a crash between write and rename leaves behind
    (tmp_path / "runs" / "r1" / ".b.bin.t2s-tmp-abc123").write_bytes(b"partial")
    assert [o.key for o in store.list("runs")] == ["runs/r1/a.bin"]


def test_failed_write_leaves_old_content_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_bytes(b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f.txt"]


def test_delete_prefix_removes_empty_directories(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_bytes("runs/r1/sft/a/b/c.txt", b"x")
    store.put_bytes("runs/r1/keep.txt", b"y")
    assert store.delete_prefix("runs/r1/sft") == 1
    assert not (tmp_path / "s" / "runs" / "r1" / "sft").exists()
    assert (tmp_path / "s" / "runs" / "r1" / "keep.txt").exists()
    assert store.delete("runs/r1/keep.txt")
    assert not (tmp_path / "s" / "runs").exists()
    assert (tmp_path / "s").is_dir()


def test_put_tree_follows_symlinked_files(tmp_path: Path) -> None:
    real = tmp_path / "blobs" / "abc"
    real.parent.mkdir()
    real.write_bytes(b"weights")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.bin").symlink_to(real)
    store = LocalStore(tmp_path / "s")
    assert store.put_tree(out, "m") == ["m/model.bin"]
    assert not (tmp_path / "s" / "m" / "model.bin").is_symlink()
    assert store.get_bytes("m/model.bin") == b"weights"
