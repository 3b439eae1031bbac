"""One runner per step: a lease object ``runs/<run>/<step>/_lease.json`` in the artifact store.

A runner creates the lease before it runs a step, renews its heartbeat while it runs and deletes it
at the end. A second runner finding a live lease exits 1 (``LeaseHeld``, a retry later can succeed)
with a message naming the holder; a lease that missed two heartbeats (its pod was killed) is waited
for until it expires, so that a Job's retries do not burn its backoffLimit on it. A lease whose heartbeat is older than ``ttl_s`` is expired and
taken over, with a warning naming the previous holder; so is a lease held by a dead process on this
very host (a ``kill -9`` of a local run), at once.

What each backend guarantees for the *first* lease is its ``create_guarantee``: an exclusive create
on the local store (a hard link), a conditional PUT (``If-None-Match: *``) on S3. A take-over is a
delete followed by the same create, so two runners taking over one expired lease at the same instant
cannot both create it. Each heartbeat re-reads the lease and compares the holder's random token:
a runner that lost its lease (a server that ignored the condition, a clock far off) is told by
``check()``, which the stage runner calls before every checkpoint and before publishing.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from ..errors import Retryable
from ..logging import get_logger
from .base import ArtifactNotFound, ArtifactStore, join_key

__all__ = ["LEASE_NAME", "LeaseHeld", "LeaseLost", "LeaseRecord", "StepLease", "default_owner"]

LEASE_NAME = "_lease.json"


class LeaseHeld(Retryable):
    """Raised when another live runner holds the step's lease (exit 1: retry once it is done)."""


class LeaseLost(Retryable):
    """Raised when a runner finds its lease taken over by another runner; it must not publish."""


@dataclass(frozen=True)
class LeaseRecord:
    """The content of ``_lease.json``."""

    owner: str
    host: str
    pid: int
    token: str
    started: float
    heartbeat: float

    def describe(self, now: float) -> str:
        started = datetime.fromtimestamp(self.started, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (f"{self.owner} (host {self.host}, pid {self.pid}, started {started}, last heartbeat "
                f"{max(0.0, now - self.heartbeat):.0f}s ago)")

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = asdict(self)
        doc["started_utc"] = datetime.fromtimestamp(self.started, UTC).isoformat()
        doc["heartbeat_utc"] = datetime.fromtimestamp(self.heartbeat, UTC).isoformat()
        return json.dumps(doc, indent=2).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> LeaseRecord | None:
        """The record, or ``None`` for a lease file nobody can read (treated as expired)."""
        try:
            doc = json.loads(raw)
            return cls(owner=str(doc["owner"]), host=str(doc["host"]), pid=int(doc["pid"]),
                       token=str(doc["token"]), started=float(doc["started"]), heartbeat=float(doc["heartbeat"]))
        except (ValueError, KeyError, TypeError):
            return None


def default_owner() -> str:
    """Who runs this step: the pod name on Kubernetes (``T2S_POD_NAME`` or the hostname), user@host here."""
    pod = os.environ.get("T2S_POD_NAME") or os.environ.get("POD_NAME")
    if pod:
        return f"pod {pod}"
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "user"
    return f"{user}@{socket.gethostname()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StepLease:
    """The lease of one step prefix; use as a context manager around running and publishing the step."""

    def __init__(self, store: ArtifactStore, prefix: str, *, ttl_s: float, heartbeat_s: float,
                 owner: str | None = None, clock: Any = time.time, sleep: Any = time.sleep) -> None:
        self.store = store
        self.key = join_key(prefix, LEASE_NAME)
        self.ttl_s = float(ttl_s)
        self.heartbeat_s = float(heartbeat_s)
        self.owner = owner or default_owner()
        self._clock = clock
        self._sleep = sleep
        self._host = socket.gethostname()
        self._token = secrets.token_hex(8)
        self._started = 0.0
        self._last_ok = 0.0
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = get_logger()

    # state ------------------------------------------------------------------------------------
    def _read(self) -> tuple[bytes, LeaseRecord | None] | None:
        try:
            raw = self.store.get_bytes(self.key)
        except ArtifactNotFound:
            return None
        return raw, LeaseRecord.from_bytes(raw)

    def _record(self, now: float) -> LeaseRecord:
        return LeaseRecord(owner=self.owner, host=self._host, pid=os.getpid(), token=self._token,
                           started=self._started, heartbeat=now)

    def _expired(self, rec: LeaseRecord | None, now: float) -> str | None:
        """Why ``rec`` may be taken over, or ``None`` while it is live."""
        if rec is None:
            return "its content is unreadable"
        if now - rec.heartbeat > self.ttl_s:
            return f"no heartbeat for {now - rec.heartbeat:.0f}s (ttl {self.ttl_s:.0f}s)"
        if rec.host == self._host and rec.pid != os.getpid() and not _pid_alive(rec.pid):
            return f"its process {rec.pid} on this host is gone"
        return None

    # life cycle -------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lease or raise ``LeaseHeld`` naming the live holder."""
        now = self._clock()
        self._started = now
        for _ in range(3):
            if self.store.create_bytes(self.key, self._record(now).to_bytes()):
                self._last_ok = now
                return
            found = self._read()
            if found is None:
                continue  # released between our create and our read: try again
            raw, rec = found
            why = self._expired(rec, self._clock())
            if why is None and rec is not None and self._clock() - rec.heartbeat > 2 * self.heartbeat_s:
                # missed beats: most likely a killed pod (OOM, node loss). Wait for the expiry instead of
                # failing, or a Job's quick retries would each exit 1 and use up its backoffLimit.
                self._log.warning("step lease is stale; waiting for it to expire", holder=rec.describe(now),
                                  lease=self.store.uri_for(self.key))
                while why is None and self._clock() - rec.heartbeat > 2 * self.heartbeat_s:
                    self._sleep(min(self.heartbeat_s, max(0.05, rec.heartbeat + self.ttl_s - self._clock())))
                    found = self._read()
                    if found is None:
                        break
                    raw, rec = found
                    why = self._expired(rec, self._clock())
                if found is None:
                    continue
            if why is None:
                assert rec is not None
                raise LeaseHeld(f"another runner holds this step: {rec.describe(self._clock())}; wait for it "
                                f"to finish, or stop it (its lease expires {self.ttl_s:.0f}s after its last "
                                "heartbeat)", uri=self.store.uri_for(self.key))
            again = self._read()
            if again is None or again[0] != raw:
                continue  # someone else changed it meanwhile: look again
            self._log.warning("taking over an expired step lease", previous=rec.describe(now) if rec else "?",
                              reason=why, lease=self.store.uri_for(self.key))
            self.store.delete(self.key)
        raise LeaseHeld("could not take the step's lease after 3 attempts (other runners are racing for it)",
                        uri=self.store.uri_for(self.key))

    def renew(self) -> None:
        """Write a fresh heartbeat if the lease is still ours; note a loss for ``check``."""
        if self._lost:
            return
        now = self._clock()
        found = self._read()
        rec = found[1] if found else None
        if rec is None or rec.token != self._token:
            holder = rec.describe(now) if rec else "nobody (the lease was deleted)"
            self._lost = f"this runner's lease was taken over; it is now held by {holder}"
            self._log.error("step lease lost", holder=holder, lease=self.store.uri_for(self.key))
            return
        self.store.put_bytes(self.key, self._record(now).to_bytes())
        self._last_ok = now

    def check(self) -> None:
        """Raise ``LeaseLost`` when this runner no longer holds the lease (it must stop before publishing)."""
        if self._lost is None and self._clock() - self._last_ok > self.ttl_s:
            self._lost = f"no heartbeat could be written for {self._clock() - self._last_ok:.0f}s"
        if self._lost is not None:
            raise LeaseLost(f"{self._lost}; not publishing", uri=self.store.uri_for(self.key))

    def release(self) -> None:
        """Delete the lease if it is still ours."""
        try:
            found = self._read()
            if found is not None and found[1] is not None and found[1].token == self._token:
                self.store.delete(self.key)
        except Exception as exc:  # noqa: BLE001 - the lease expires by itself; the step's own outcome matters more
            self._log.warning("could not release the step lease; it expires by itself", error=str(exc))

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - a store hiccup: retried at the next beat, check() decides
                self._log.warning("step lease heartbeat failed", error=str(exc))

    def __enter__(self) -> StepLease:  # noqa: PYI034 - never subclassed
        self.acquire()
        self._thread = threading.Thread(target=self._beat, name="t2s-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 5)
        self.release()
