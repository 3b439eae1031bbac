"""Artifact store in a local directory: the default, and what tests and laptops use.

Every write goes to a temp file in the target directory and is renamed into place, so a crash
leaves either the old object or the new one, never half of one; temp files are invisible to ``list``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import BadInput
from .base import ArtifactNotFound, ArtifactStore, ObjectInfo, normalize_key, normalize_prefix

__all__ = ["LocalStore", "atomic_copy", "atomic_write_bytes"]

_TMP_MARK = ".t2s-tmp-"


def _tmp_in(directory: Path, name: str) -> tuple[int, str]:
    directory.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{name}{_TMP_MARK}", dir=directory)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file and ``os.replace``."""
    fd, tmp = _tmp_in(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` (following symlinks) to ``dst`` via a temp file and ``os.replace``."""
    fd, tmp = _tmp_in(dst.parent, dst.name)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalStore(ArtifactStore):
    """Artifacts as plain files under ``root``: key ``a/b.txt`` is ``root/a/b.txt``."""

    def __init__(self, root: Path, *, workers: int = 4) -> None:
        self.root = Path(root).absolute()
        self.uri = self.root.as_uri()
        self.default_workers = workers

    def _path(self, key: str) -> Path:
        return self.root / normalize_key(key)

    def put_file(self, local: Path, key: str) -> None:
        local = Path(local)
        if not local.is_file():
            raise BadInput(f"cannot upload {local}: not a file", uri=self.uri_for(key))
        atomic_copy(local, self._path(key))

    def get_file(self, key: str, local: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise ArtifactNotFound("no such artifact", uri=self.uri_for(key))
        atomic_copy(src, Path(local))

    def put_bytes(self, key: str, data: bytes) -> None:
        atomic_write_bytes(self._path(key), bytes(data))

    create_guarantee = "atomic: a hard link of a complete temp file, which fails when the key exists"

    def create_bytes(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        fd, tmp = _tmp_in(path.parent, path.name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(bytes(data))
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            return True
        finally:
            Path(tmp).unlink(missing_ok=True)

    def debris(self, prefix: str) -> list[str]:
        """Temp files (``*.t2s-tmp-*``) that a killed writer left; ``list`` never shows them."""
        prefix = normalize_prefix(prefix)
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        found = []
        for root, _dirs, files in os.walk(base):
            found.extend((Path(root) / n).relative_to(self.root).as_posix() for n in files if _TMP_MARK in n)
        return sorted(found)

    def clean_debris(self, prefix: str) -> int:
        removed = 0
        for key in self.debris(prefix):
            path = self.root / key
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed += 1
            self._prune_empty_dirs(path.parent)
        return removed

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ArtifactNotFound("no such artifact", uri=self.uri_for(key)) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> bool:
        path = self._path(key)
        if not path.is_file():
            return False
        path.unlink(missing_ok=True)
        self._prune_empty_dirs(path.parent)
        return True

    def list(self, prefix: str) -> list[ObjectInfo]:
        prefix = normalize_prefix(prefix)
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        found = []
        for root, dirs, files in os.walk(base):
            for name in files:
                if _TMP_MARK in name:
                    continue
                path = Path(root) / name
                key = path.relative_to(self.root).as_posix()
                found.append(ObjectInfo(key, path.stat().st_size))
        return sorted(found, key=lambda o: o.key)

    def delete_prefix(self, prefix: str) -> int:
        prefix = normalize_prefix(prefix)
        infos = self.list(prefix)
        for info in infos:
            (self.root / info.key).unlink(missing_ok=True)
        base = self.root / prefix if prefix else self.root
        if base.is_dir():
            for root, _dirs, _files in sorted(os.walk(base), key=lambda w: -len(w[0])):
                self._prune_empty_dirs(Path(root))
        return len(infos)

    def _prune_empty_dirs(self, directory: Path) -> None:
        """Remove now-empty directories up to the root so deleted prefixes stop existing."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent
