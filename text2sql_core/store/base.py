"""The artifact store interface every stage talks to, whatever the backend.

Keys are ``/``-separated paths relative to the store root (``runs/<run>/<step>/model.safetensors``).
A *prefix* names a directory of keys: ``list("runs/r1/sft")`` sees ``runs/r1/sft/...`` but never
``runs/r1/sft_old/...``, on every backend, so that ``delete_prefix`` cannot reach a sibling step.
"""

from __future__ import annotations

import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from ..errors import BadInput

__all__ = ["ArtifactNotFound", "ArtifactStore", "ObjectInfo", "join_key", "local_files", "normalize_key",
           "normalize_prefix"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key (relative to the store root) and size in bytes."""

    key: str
    size: int


class ArtifactNotFound(BadInput):
    """Raised when a key or prefix holds nothing; a retry cannot make it appear (exit 2)."""


def normalize_key(key: str) -> str:
    """Check a key is a plain relative path, so it can neither escape a directory nor alias another key."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise BadInput(f"invalid artifact key {key!r}: expected a relative path like "
                       "'runs/<run>/<step>/file'")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise BadInput(f"invalid artifact key {key!r}: empty, '.' or '..' path segments are not allowed")
    return key


def normalize_prefix(prefix: str) -> str:
    """``'runs/r1/sft/'`` and ``'runs/r1/sft'`` name the same directory; ``''`` is the whole store."""
    prefix = prefix.strip("/")
    return normalize_key(prefix) if prefix else ""


def join_key(prefix: str, rel: str) -> str:
    prefix = normalize_prefix(prefix)
    return normalize_key(f"{prefix}/{rel}" if prefix else rel)


def local_files(local_dir: Path) -> list[tuple[str, Path]]:
    """Every file under ``local_dir`` as (relative posix path, path), sorted; symlinks to files count."""
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise BadInput(f"{local_dir} is not a directory", uri=str(local_dir))
    found: list[tuple[str, Path]] = []
    for root, dirs, files in os.walk(local_dir, followlinks=True):
        dirs.sort()
        for name in files:
            path = Path(root) / name
            if path.is_file():
                found.append((path.relative_to(local_dir).as_posix(), path))
    return sorted(found)


def local_target(local_dir: Path, rel: str) -> Path:
    """Where ``rel`` lands under ``local_dir``; refuses keys that would write outside it."""
    normalize_key(rel)
    return Path(local_dir) / rel


def run_parallel(fn: Callable[[T], R], items: Sequence[T], workers: int, *, desc: str = "",
                 weight: Callable[[T], int] | None = None) -> list[R]:
    """Apply ``fn`` to every item on a thread pool; the first failure cancels the rest and is raised.

    Results keep the order of ``items``. A byte-weighted tqdm bar goes to stderr on a terminal only.
    """
    items = list(items)
    if not items:
        return []
    total = sum(weight(i) for i in items) if weight else len(items)
    bar = tqdm(total=total, desc=desc, unit="B" if weight else "file", unit_scale=bool(weight),
               disable=None if sys.stderr.isatty() else True, leave=False, file=sys.stderr)
    try:
        if workers <= 1 or len(items) == 1:
            results = []
            for it in items:
                results.append(fn(it))
                bar.update(weight(it) if weight else 1)
            return results
        with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="t2s-store") as pool:
            futures = {pool.submit(fn, it): i for i, it in enumerate(items)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in done:
                    if f.exception() is not None:
                        for p in pending:
                            p.cancel()
                        raise f.exception()  # type: ignore[misc]
                    bar.update(weight(items[futures[f]]) if weight else 1)
            out: list[R | None] = [None] * len(items)
            for f, i in futures.items():
                out[i] = f.result()
            return out  # type: ignore[return-value]
    finally:
        bar.close()


class ArtifactStore(ABC):
    """Put/get files, byte strings and directory trees under string keys.

    Implementations must make every single-object write atomic (a reader sees the old object, the
    new one, or nothing) because publishing relies on ``_manifest.json`` appearing all at once.
    """

    #: Where the store points, for logs and error messages (``file:///abs`` or ``s3://bucket/prefix``);
    #: never contains credentials.
    uri: str
    #: Parallel transfers used by tree operations when ``workers`` is not given.
    default_workers: int = 4

    def uri_for(self, key: str) -> str:
        """The URI of one key, for error messages."""
        return f"{self.uri.rstrip('/')}/{key}" if key else self.uri

    # single objects
    @abstractmethod
    def put_file(self, local: Path, key: str) -> None:
        """Upload one local file to ``key`` (replacing it)."""

    @abstractmethod
    def get_file(self, key: str, local: Path) -> None:
        """Download ``key`` to ``local``: written to a temp file then renamed, so never half a file."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` in one atomic write."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The whole content of ``key``; raises ``ArtifactNotFound`` when missing."""

    #: What ``create_bytes`` guarantees against a concurrent writer of the same key (see its docstring).
    create_guarantee: str = "none: another writer can overwrite between the check and the write"

    def create_bytes(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` only when nothing is stored there; returns whether it was created.

        This fallback checks then writes (a race window); backends override it with an atomic create.
        """
        if self.exists(key):
            return False
        self.put_bytes(key, data)
        return True

    def debris(self, prefix: str) -> list[str]:
        """Leftovers of crashed writes under ``prefix`` (temp files, incomplete uploads), for clean-up."""
        return []

    def clean_debris(self, prefix: str) -> int:
        """Remove what ``debris`` lists; returns how many were removed. Only a runner holding the
        prefix's lease may call it, since a live writer's temp objects look the same."""
        return 0

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under exactly ``key``."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Delete one object; returns whether it existed."""

    def delete_keys(self, keys: Iterable[str], *, workers: int | None = None) -> None:
        """Delete many objects (missing ones are fine); backends override this with a batch call."""
        run_parallel(self.delete, [normalize_key(k) for k in keys], workers or self.default_workers,
                     desc=f"delete {self.uri}")

    # prefixes
    @abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object under the directory ``prefix`` (recursive), sorted by key."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under the directory ``prefix``; returns how many were deleted."""

    # trees
    def put_files(self, files: Iterable[tuple[Path, str]], *, workers: int | None = None) -> list[str]:
        """Upload (local path, key) pairs in parallel; returns the keys."""
        pairs = [(Path(p), normalize_key(k)) for p, k in files]
        run_parallel(lambda pk: self.put_file(*pk), pairs, workers or self.default_workers,
                     desc=f"upload {self.uri}", weight=lambda pk: pk[0].is_file() and pk[0].stat().st_size)
        return [k for _, k in pairs]

    def put_tree(self, local_dir: Path, prefix: str, *, workers: int | None = None) -> list[str]:
        """Upload every file under ``local_dir`` to ``prefix/<relative path>``; returns the keys, sorted."""
        pairs = [(path, join_key(prefix, rel)) for rel, path in local_files(Path(local_dir))]
        return self.put_files(pairs, workers=workers)

    def get_tree(self, prefix: str, local_dir: Path, *, workers: int | None = None) -> list[Path]:
        """Download every object under ``prefix`` into ``local_dir``, keeping relative paths.

        Raises ``ArtifactNotFound`` when the prefix is empty: an empty download is always a mistake.
        """
        prefix = normalize_prefix(prefix)
        infos = self.list(prefix)
        if not infos:
            raise ArtifactNotFound("nothing is stored under this prefix", uri=self.uri_for(prefix))
        cut = len(prefix) + 1 if prefix else 0
        jobs = [(info, local_target(Path(local_dir), info.key[cut:])) for info in infos]
        run_parallel(lambda job: self.get_file(job[0].key, job[1]), jobs, workers or self.default_workers,
                     desc=f"download {self.uri}", weight=lambda job: job[0].size)
        return [path for _, path in jobs]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"
