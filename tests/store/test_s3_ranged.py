"""Parallel ranged GETs: a big object arrives in parts, written at their offsets, hashed in order as they come."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.servers import S3Server, unique_name


@pytest.mark.parametrize("size", [0, 1, 5 * 1024 * 1024 - 1, 5 * 1024 * 1024, 17 * 1024 * 1024 + 3])
def test_ranged_download_returns_the_bytes_and_their_sha256(moto_s3: S3Server, tmp_path: Path, size: int) -> None:
    store = moto_s3.open("t2s-ranged", prefix=unique_name("r"), part_size_mb=5, multipart_workers=3)
    data = os.urandom(size)
    store.put_bytes("blob.bin", data)
    want = (size, hashlib.sha256(data).hexdigest())
    for known in (None, size):  # the size unknown (learnt from the first part) or given by a manifest
        (tmp_path / "blob.bin").unlink(missing_ok=True)
        assert store.get_file_hashed("blob.bin", tmp_path / "blob.bin", size=known) == want
        assert (tmp_path / "blob.bin").read_bytes() == data
    assert not [p for p in tmp_path.iterdir() if p.name != "blob.bin"]  # no temp file left behind


def test_a_single_worker_streams_one_get(moto_s3: S3Server, tmp_path: Path) -> None:
    store = moto_s3.open("t2s-ranged", prefix=unique_name("r"), part_size_mb=5, multipart_workers=1)
    data = os.urandom(11 * 1024 * 1024)
    store.put_bytes("one.bin", data)
    store.get_file("one.bin", tmp_path / "one.bin")
    assert (tmp_path / "one.bin").read_bytes() == data
