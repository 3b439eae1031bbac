"""The ArtifactStore contract, run unchanged on the local backend, moto and SeaweedFS."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from text2sql_core.errors import BadInput
from text2sql_core.store import ArtifactNotFound, ArtifactStore, ObjectInfo
from text2sql_core.store.base import join_key, normalize_prefix


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _tree(root: Path) -> dict[str, bytes]:
    files = {
        "config.json": b'{"a": 1}',
        "weights/model.bin": os.urandom(70_000),
        "weights/empty.txt": b"",
        "deep/er/still/ok.txt": b"deep",
        "names with spaces/ünïcode.sql": "SELECT 'é';".encode(),
        ".hidden": b"dotfile",
    }
    for rel, data in files.items():
        _write(root / rel, data)
    return files


def test_bytes_round_trip_and_overwrite(store: ArtifactStore) -> None:
    assert not store.exists("a/b.txt")
    store.put_bytes("a/b.txt", b"first")
    assert store.exists("a/b.txt")
    assert store.get_bytes("a/b.txt") == b"first"
    store.put_bytes("a/b.txt", b"second, longer")
    assert store.get_bytes("a/b.txt") == b"second, longer"
    store.put_bytes("a/empty", b"")
    assert store.get_bytes("a/empty") == b""
    assert not store.exists("a")  # a prefix is not an object


def test_missing_key_raises_artifact_not_found_naming_uri(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound) as info:
        store.get_bytes("runs/r1/nope.json")
    assert store.uri_for("runs/r1/nope.json") in str(info.value)
    assert info.value.exit_code == 2
    target = tmp_path / "dl" / "nope.json"
    target.parent.mkdir()
    with pytest.raises(ArtifactNotFound):
        store.get_file("runs/r1/nope.json", target)
    assert not target.exists()
    assert list((tmp_path / "dl").iterdir()) == []  # no temp file left behind


def test_file_round_trip_multipart_size(store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(11 * 1024 * 1024 + 123)  # above the 5 MiB part size of the S3 fixtures: multipart
    src = _write(tmp_path / "src" / "big.bin", data)
    store.put_file(src, "runs/r1/sft/big.bin")
    assert store.list("runs/r1/sft") == [ObjectInfo("runs/r1/sft/big.bin", len(data))]
    dst = tmp_path / "dst" / "sub" / "big.bin"
    store.get_file("runs/r1/sft/big.bin", dst)
    assert dst.read_bytes() == data
    assert sorted(p.name for p in dst.parent.iterdir()) == ["big.bin"]


def test_get_file_replaces_existing_local_file(store: ArtifactStore, tmp_path: Path) -> None:
    store.put_bytes("k", b"new content")
    dst = _write(tmp_path / "k", b"old content that is longer")
    store.get_file("k", dst)
    assert dst.read_bytes() == b"new content"


def test_put_file_refuses_a_missing_local_file(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="not a file"):
        store.put_file(tmp_path / "missing.bin", "x")


def test_tree_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    files = _tree(tmp_path / "out")
    keys = store.put_tree(tmp_path / "out", "runs/r1/sft/", workers=4)
    assert keys == sorted(f"runs/r1/sft/{rel}" for rel in files)
    listed = store.list("runs/r1/sft")
    assert [o.key for o in listed] == keys
    assert {o.key: o.size for o in listed} == {f"runs/r1/sft/{rel}": len(d) for rel, d in files.items()}

    paths = store.get_tree("runs/r1/sft", tmp_path / "back", workers=3)
    assert sorted(paths) == sorted(tmp_path / "back" / rel for rel in files)
    for rel, data in files.items():
        assert (tmp_path / "back" / rel).read_bytes() == data


def test_get_tree_of_empty_prefix_is_not_found(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound, match="nothing is stored"):
        store.get_tree("runs/none", tmp_path / "x")


def test_put_tree_of_missing_dir_is_bad_input(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="not a directory"):
        store.put_tree(tmp_path / "nope", "runs/r1/x")


def test_list_is_recursive_sorted_and_prefix_is_a_directory(store: ArtifactStore) -> None:
    for key in ["runs/r1/sft/b.txt", "runs/r1/sft/a/z.txt", "runs/r1/sft_old/a.txt", "runs/r1/sft.txt",
                "runs/r2/sft/a.txt"]:
        store.put_bytes(key, key.encode())
    expected = [ObjectInfo("runs/r1/sft/a/z.txt", 19), ObjectInfo("runs/r1/sft/b.txt", 17)]
    assert store.list("runs/r1/sft") == expected
    assert store.list("runs/r1/sft/") == expected
    assert store.list("/runs/r1/sft/") == expected
    assert [o.key for o in store.list("runs/r1")] == ["runs/r1/sft.txt", "runs/r1/sft/a/z.txt",
                                                        "runs/r1/sft/b.txt", "runs/r1/sft_old/a.txt"]
    assert len(store.list("")) == 5
    assert store.list("runs/r3") == []


def test_delete_prefix_spares_siblings(store: ArtifactStore) -> None:
    for key in ["runs/r1/sft/a.txt", "runs/r1/sft/d/b.txt", "runs/r1/sft_old/a.txt", "runs/r1/sftx"]:
        store.put_bytes(key, b"x")
    assert store.delete_prefix("runs/r1/sft/") == 2
    assert store.list("runs/r1/sft") == []
    assert not store.exists("runs/r1/sft/a.txt")
    assert [o.key for o in store.list("runs/r1")] == ["runs/r1/sft_old/a.txt", "runs/r1/sftx"]
    assert store.delete_prefix("runs/r1/sft") == 0
    # the prefix can be written again after deletion
    store.put_bytes("runs/r1/sft/a.txt", b"again")
    assert store.get_bytes("runs/r1/sft/a.txt") == b"again"


def test_delete_one_key(store: ArtifactStore) -> None:
    store.put_bytes("p/one", b"1")
    store.put_bytes("p/two", b"2")
    assert store.delete("p/one") is True
    assert store.delete("p/one") is False
    assert [o.key for o in store.list("p")] == ["p/two"]


def test_delete_keys_in_one_go(store: ArtifactStore) -> None:
    for i in range(5):
        store.put_bytes(f"p/{i}", b"x")
    store.delete_keys(["p/0", "p/2", "p/4", "p/never-existed"])
    assert [o.key for o in store.list("p")] == ["p/1", "p/3"]
    store.delete_keys([])
    with pytest.raises(BadInput, match="invalid artifact key"):
        store.delete_keys(["../p/1"])
    assert len(store.list("p")) == 2


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "./a", "a\\b", "a/."])
def test_invalid_keys_are_refused(store: ArtifactStore, key: str) -> None:
    with pytest.raises(BadInput, match="invalid artifact key"):
        store.put_bytes(key, b"x")


def test_uri_names_the_backend_without_secrets(store: ArtifactStore) -> None:
    assert store.uri.startswith(("file:///", "s3://"))
    assert store.uri_for("runs/r1/x") == store.uri.rstrip("/") + "/runs/r1/x"
    secret = getattr(getattr(store, "_client", None), "_provider", None)
    if secret is not None:
        creds = secret.retrieve()
        assert creds.secret_key not in store.uri
        assert creds.secret_key not in repr(store)


def test_key_helpers() -> None:
    assert normalize_prefix("/runs/r1/") == "runs/r1"
    assert normalize_prefix("") == ""
    assert join_key("", "a/b") == "a/b"
    assert join_key("runs/r1/", "a") == "runs/r1/a"
    with pytest.raises(BadInput):
        join_key("runs", "../etc/passwd")
