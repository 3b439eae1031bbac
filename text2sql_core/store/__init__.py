"""Artifact stores: one interface (``ArtifactStore``), a local-directory and an S3 backend.

``open_store(cfg)`` is the only constructor stages need; manifests and atomic publish live in
``store.manifest``.
"""

from __future__ import annotations

from pathlib import Path

from .base import ArtifactNotFound, ArtifactStore, ObjectInfo
from .config import LocalStoreConfig, S3StoreConfig, StoreConfig
from .local import LocalStore

__all__ = ["ArtifactNotFound", "ArtifactStore", "LocalStore", "LocalStoreConfig", "ObjectInfo",
           "S3StoreConfig", "StoreConfig", "open_store"]


def open_store(cfg: StoreConfig, *, base_dir: Path | None = None) -> ArtifactStore:
    """The store ``cfg`` describes; a relative local path is resolved against ``base_dir`` (or the cwd)."""
    if cfg.kind == "s3":
        from .s3 import S3Store  # the minio SDK is only needed for S3

        assert cfg.s3 is not None  # guaranteed by StoreConfig's validator
        return S3Store(cfg.s3)
    root = Path(cfg.local.path).expanduser()
    if not root.is_absolute():
        root = Path(base_dir or Path.cwd()) / root
    return LocalStore(root)
