"""What no manifest references under a run, and its removal (``t2s store gc``).

Publishing already removes the debris of earlier attempts of the step it publishes; ``gc`` sweeps a
whole run: objects no ``_manifest.json`` lists (a step or checkpoint killed before its manifest was
written, files of an older output), leases whose holder is gone, temp files and incomplete multipart
uploads. Steps whose lease is live are skipped: their unlisted objects are uploads in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import ArtifactStore, normalize_prefix
from .lease import LEASE_NAME, LeaseRecord
from .manifest import MANIFEST_NAME, read_manifest

__all__ = ["GarbageReport", "collect_garbage"]


@dataclass
class GarbageReport:
    """What ``collect_garbage`` found (and removed, unless it was a dry run)."""

    unreferenced: list[tuple[str, int]] = field(default_factory=list)
    debris: list[str] = field(default_factory=list)
    skipped_live: list[str] = field(default_factory=list)
    removed: int = 0

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.unreferenced)


def _step_of(run_prefix: str, key: str) -> str:
    return key[len(run_prefix) + 1:].split("/", 1)[0]


def collect_garbage(store: ArtifactStore, run_id: str, *, delete: bool = False, lease_ttl_s: float = 120.0,
                    now: float | None = None) -> GarbageReport:
    """List (and with ``delete`` remove) what no manifest of run ``run_id`` references."""
    import time

    now = time.time() if now is None else now
    run_prefix = normalize_prefix(f"runs/{run_id}")
    infos = store.list(run_prefix)
    report = GarbageReport()
    live: set[str] = set()
    for info in infos:
        if info.key.rsplit("/", 1)[-1] == LEASE_NAME:
            rec = LeaseRecord.from_bytes(store.get_bytes(info.key))
            if rec is not None and now - rec.heartbeat <= lease_ttl_s:
                live.add(_step_of(run_prefix, info.key))
    referenced: set[str] = set()
    for info in infos:
        if info.key.rsplit("/", 1)[-1] == MANIFEST_NAME:
            prefix = info.key.rsplit("/", 1)[0]
            manifest = read_manifest(store, prefix)
            if manifest is not None:
                referenced.add(info.key)
                referenced.update(f"{prefix}/{f.path}" for f in manifest.files)
    report.skipped_live = sorted(live)
    for info in infos:
        if info.key in referenced or _step_of(run_prefix, info.key) in live:
            continue
        report.unreferenced.append((info.key, info.size))
    steps = sorted({_step_of(run_prefix, i.key) for i in infos} | {
        _step_of(run_prefix, k) for k in store.debris(run_prefix)})
    for step in steps:
        if step in live:
            continue
        report.debris += store.debris(f"{run_prefix}/{step}")
    if delete:
        store.delete_keys([k for k, _ in report.unreferenced])
        report.removed = len(report.unreferenced)
        for step in steps:
            if step not in live:
                report.removed += store.clean_debris(f"{run_prefix}/{step}")
    return report
