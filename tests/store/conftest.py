"""The ``store`` fixture: the same tests run on the local backend, moto and SeaweedFS."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.servers import on_seaweedfs, unique_name
from text2sql_core.store import ArtifactStore, LocalStore

BACKENDS = ["local", "moto", pytest.param("seaweedfs", marks=on_seaweedfs)]


def make_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    """A fresh, empty store: a temp dir, or a unique prefix in a shared bucket of a session server."""
    if backend == "local":
        return LocalStore(tmp_path / "store")
    if backend == "moto":
        server = request.getfixturevalue("moto_s3")
    else:
        server = request.getfixturevalue("seaweedfs").s3
    return server.open("t2s-store-tests", prefix=f"suite/{unique_name('t')}", part_size_mb=5)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    return make_store(request.param, request, tmp_path)
