"""Manifests and atomic publish: a step's output exists only once its ``_manifest.json`` does.

``publish`` uploads every file first and writes the manifest last, so a reader never sees a
manifest whose files are not all there. ``fetch`` trusts nothing but the manifest: each file is
checked for size and sha256 before it appears under its final local name.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import BadInput, ChecksumMismatch, T2SError
from .base import (
    ArtifactNotFound,
    ArtifactStore,
    join_key,
    local_files,
    local_target,
    normalize_prefix,
    run_parallel,
)
from .lease import LEASE_NAME

__all__ = ["MANIFEST_NAME", "FileEntry", "Manifest", "code_version", "content_digest", "fetch", "file_sha256",
           "publish", "read_manifest"]

MANIFEST_NAME = "_manifest.json"
_CHUNK = 4 * 1024 * 1024


class FileEntry(BaseModel):
    """One published file, relative to the step's prefix."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(..., description="Path relative to the published prefix, '/'-separated.")
    size: int = Field(..., ge=0, description="Size in bytes.")
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$", description="Hex sha256 of the content.")


class Manifest(BaseModel):
    """What a published prefix holds, and what produced it."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(..., description="Run that produced the files.")
    step: str = Field(..., description="Step (graph node) that produced the files.")
    kind: str = Field(..., description="Stage kind of the step.")
    config_hash: str = Field(..., description="Hash of everything that determines the output.")
    code_version: str = Field(..., description="Package version, image tag and git commit of the producer.")
    files: list[FileEntry] = Field(..., description="Every published file, sorted by path.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Metrics the stage returned.")
    started_at: datetime = Field(..., description="When the step started (UTC).")
    finished_at: datetime = Field(..., description="When the manifest was written (UTC).")
    extra: dict[str, Any] = Field(default_factory=dict, description="Free-form details (upstream hashes...).")

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def digest(self) -> str:
        """sha256 of what the files hold (paths, sizes, sha256s): equal digests mean equal bytes."""
        return content_digest((f.path, f.size, f.sha256) for f in self.files)


def content_digest(entries: Any) -> str:
    """Order-independent sha256 of ``(path, size, sha256-or-None)`` triples: the lineage key of a tree."""
    rows = sorted([str(p), int(n), s] for p, n, s in entries)
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


@lru_cache(maxsize=1)
def code_version() -> str:
    """``<package version>[+<T2S_CODE_VERSION>][+g<git sha>]``: enough to find the code that made an artifact.

    The image build sets ``T2S_CODE_VERSION`` (tag or commit); a source checkout adds its own commit.
    """
    try:
        version = metadata.version("text2sql-rlhf")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
        from .. import __version__ as version
    parts = [version]
    env = os.environ.get("T2S_CODE_VERSION", "").strip()
    if env:
        parts.append(env)
    repo = Path(__file__).resolve().parents[2]
    if (repo / ".git").exists():
        try:
            sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True, timeout=5, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            sha = ""
        if sha and (not env or sha not in env):
            parts.append(f"g{sha}")
    return "+".join(parts)


def file_sha256(path: Path) -> tuple[int, str]:
    """(size, hex sha256) of a local file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _manifest_key(prefix: str) -> str:
    return join_key(prefix, MANIFEST_NAME)


def read_manifest(store: ArtifactStore, prefix: str) -> Manifest | None:
    """The manifest published under ``prefix``; ``None`` when nothing (complete) was published there."""
    key = _manifest_key(prefix)
    try:
        raw = store.get_bytes(key)
    except ArtifactNotFound:
        return None
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        raise BadInput(f"corrupt manifest ({exc.error_count()} problem(s), first at `{where}`: "
                       f"{first['msg']}); delete the prefix or republish the step",
                       uri=store.uri_for(key)) from None


def _stale_keys(store: ArtifactStore, prefix: str, new_rel: set[str]) -> list[str]:
    """Objects under ``prefix`` that the new publication does not list.

    Sub-prefixes holding their own manifest are separate publications (checkpoints under
    ``_checkpoints/<n>/``) and are left alone.
    """
    cut = len(prefix) + 1 if prefix else 0
    rels = [info.key[cut:] for info in store.list(prefix)]
    nested = {rel.rsplit("/", 1)[0] + "/" for rel in rels
              if "/" in rel and rel.rsplit("/", 1)[1] == MANIFEST_NAME}
    return [join_key(prefix, rel) for rel in rels
            if rel not in new_rel and rel not in (MANIFEST_NAME, LEASE_NAME)
            and not any(rel.startswith(n) for n in nested)]


def publish(store: ArtifactStore, prefix: str, local_dir: Path, *, run_id: str, step: str, kind: str,
            config_hash: str, metrics: dict[str, Any], started_at: datetime,
            extra: dict[str, Any] | None = None, workers: int | None = None) -> Manifest:
    """Publish every file under ``local_dir`` to ``prefix`` and write ``prefix/_manifest.json`` last.

    Order matters for crash safety: the old manifest goes first (so it can never describe new
    files), then the debris of killed attempts and objects the new output no longer has, then the uploads, a size check of what the
    store now holds, and finally the new manifest.
    """
    prefix = normalize_prefix(prefix)
    local_dir = Path(local_dir)
    files = local_files(local_dir)
    reserved = [rel for rel, _ in files if rel.rsplit("/", 1)[-1] == MANIFEST_NAME]
    if reserved:
        raise BadInput(f"{MANIFEST_NAME} is reserved for the manifest the publisher writes; rename "
                       f"{', '.join(reserved)}", uri=str(local_dir))
    workers = workers or store.default_workers
    hashes = run_parallel(lambda f: file_sha256(f[1]), files, workers, desc="sha256",
                          weight=lambda f: f[1].stat().st_size)
    entries = [FileEntry(path=rel, size=size, sha256=sha)
               for (rel, _), (size, sha) in zip(files, hashes, strict=True)]

    store.delete(_manifest_key(prefix))
    store.clean_debris(prefix)  # temp files and incomplete uploads of earlier, killed attempts
    stale = _stale_keys(store, prefix, {e.path for e in entries})
    store.delete_keys(stale, workers=workers)
    store.put_files([(path, join_key(prefix, rel)) for rel, path in files], workers=workers)

    cut = len(prefix) + 1 if prefix else 0
    stored = {info.key[cut:]: info.size for info in store.list(prefix)}
    for e in entries:
        if stored.get(e.path) != e.size:
            raise T2SError(f"after upload the store holds {stored.get(e.path)} bytes for {e.path}, expected "
                           f"{e.size} (was the file modified while publishing?)",
                           uri=store.uri_for(join_key(prefix, e.path)))
    for e, (_, path) in zip(entries, files, strict=True):
        if path.stat().st_size != e.size:
            raise T2SError(f"{path} changed while it was being published", uri=str(path))

    manifest = Manifest(run_id=run_id, step=step, kind=kind, config_hash=config_hash,
                        code_version=code_version(), files=entries, metrics=dict(metrics),
                        started_at=started_at, finished_at=datetime.now(UTC), extra=dict(extra or {}))
    store.put_bytes(_manifest_key(prefix), manifest.model_dump_json(indent=2).encode())
    return manifest


def _fetch_one(store: ArtifactStore, prefix: str, local_dir: Path, entry: FileEntry) -> bool:
    """Download and verify one file; returns False when a verified copy was already there."""
    target = local_target(local_dir, entry.path)
    if target.is_file() and target.stat().st_size == entry.size and file_sha256(target)[1] == entry.sha256:
        return False
    key = join_key(prefix, entry.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.t2s-fetch-", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        hashed = getattr(store, "get_file_hashed", None)  # S3: hashed while the bytes arrive, no second read
        if hashed is not None:
            size, sha = hashed(key, tmp, size=entry.size)
        else:
            store.get_file(key, tmp)
            size, sha = file_sha256(tmp)
        if size != entry.size or sha != entry.sha256:
            raise ChecksumMismatch(f"downloaded {entry.path} does not match its manifest: expected "
                                   f"{entry.size} bytes sha256 {entry.sha256}, got {size} bytes sha256 {sha}",
                                   uri=store.uri_for(key), record=entry.path)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def fetch(store: ArtifactStore, prefix: str, local_dir: Path, *, manifest: Manifest | None = None,
          workers: int | None = None) -> Manifest:
    """Download every file the manifest lists into ``local_dir`` and verify size and sha256.

    Files already present with the right hash are kept (a cheap resume). Raises ``ArtifactNotFound``
    when nothing was published and ``ChecksumMismatch`` when the store's bytes differ from the manifest.
    """
    prefix = normalize_prefix(prefix)
    if manifest is None:
        manifest = read_manifest(store, prefix)
        if manifest is None:
            raise ArtifactNotFound(f"no {MANIFEST_NAME}: nothing complete was published here",
                                   uri=store.uri_for(prefix))
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    run_parallel(lambda e: _fetch_one(store, prefix, local_dir, e), manifest.files,
                 workers or store.default_workers, desc=f"fetch {store.uri_for(prefix)}",
                 weight=lambda e: e.size)
    return manifest
