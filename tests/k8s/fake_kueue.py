"""A fake Kueue beside the fake API server: Kueue's documented behaviour for batch/v1 Jobs, as far as
the stage controller meets it (see Kueue's jobframework reconciler and its docs on workloads and
preemption).

* **Managed Jobs**: a Job labelled ``kueue.x-k8s.io/queue-name``, or any Job when the cluster admin
  set ``manageJobsWithoutQueueName`` (such a Job gets ``default_queue``, or is never admitted).
* **Webhook**: a managed Job is made suspended at creation (a mutating admission on the server).
* **Workloads**: one per managed Job, queued in FIFO order of creation (StrictFIFO: the head that
  does not fit blocks the rest) in one ClusterQueue with a quota of ``max_jobs`` Jobs and/or
  ``max_gpus`` GPUs. A Job naming a queue that does not exist is inadmissible and stays suspended.
* **Admission**: the Job is unsuspended ("Job admitted, unsuspending"); a finished Job (Complete or
  Failed) gives its quota back.
* **No admission, no run**: a managed Job that is unsuspended without admission (by hand, or by a
  chaining tool) is suspended again ("Not admitted by cluster queue").
* **Preemption on demand** (``preempt``): the Workload is evicted, the Job suspended and its
  ``startTime`` cleared (so the Job controller deletes its pods); the Workload is requeued in its
  FIFO place. For ``hold_s`` its preemptor holds the quota (nothing is admitted), then it is admitted
  again. Nothing is Failed.

Every write goes through the real client with field manager ``kueue``; ``history`` records what
Kueue did, in order, for the tests' assertions.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Self

from tests.k8s.fake_apiserver import FakeApiServer

__all__ = ["FIELD_MANAGER", "PRIORITY_LABEL", "QUEUE_LABEL", "FakeKueue", "KueueAction", "Workload"]

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
FIELD_MANAGER = "kueue"
_MERGE = "application/merge-patch+json"


@dataclass
class Workload:
    """Kueue's Workload of one Job: its place in the queue and whether it holds quota."""

    job: str
    uid: str
    queue: str | None
    seq: int
    gpus: int
    admitted: bool = False
    finished: bool = False
    evictions: int = 0
    held_until: float = 0.0


@dataclass(frozen=True)
class KueueAction:
    """One thing Kueue did: admitted, resuspended (ran without admission), evicted, finished."""

    what: str
    job: str
    time: float = field(default_factory=time.monotonic)


def _finished(job: dict[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or ())


class FakeKueue:
    def __init__(self, server: FakeApiServer, namespace: str, *, max_jobs: int | None = 1,
                 max_gpus: int | None = None, queues: tuple[str, ...] = ("gpu",),
                 manage_jobs_without_queue_name: bool = False, default_queue: str | None = None,
                 gpu_resource: str = "nvidia.com/gpu", poll_s: float = 0.05) -> None:
        from kubernetes import client

        self.server = server
        self.namespace = namespace
        self.max_jobs = max_jobs
        self.max_gpus = max_gpus
        self.queues = set(queues)
        self.manage_jobs_without_queue_name = manage_jobs_without_queue_name
        self.default_queue = default_queue
        self.gpu_resource = gpu_resource
        self.poll_s = poll_s
        self.history: list[KueueAction] = []
        self.errors: list[str] = []
        self.workloads: dict[str, Workload] = {}  # Job uid -> Workload
        self._api = server.api_client()
        self.batch = client.BatchV1Api(self._api)
        self._seq = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-kueue", daemon=True)

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeKueue:
        self.server.add_admission(self._webhook)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._api.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- what tests look at ----------------------------------------------------------------

    def did(self, what: str) -> list[str]:
        """Jobs Kueue ``what``-ed (admitted, resuspended, evicted, finished), in order."""
        with self._lock:
            return [a.job for a in self.history if a.what == what]

    def admitted_now(self) -> list[str]:
        with self._lock:
            return sorted(w.job for w in self.workloads.values() if w.admitted and not w.finished)

    # ---- Kueue's parts ---------------------------------------------------------------------

    def queue_of(self, job: dict[str, Any]) -> tuple[bool, str | None]:
        """(managed?, LocalQueue) of a Job."""
        queue = ((job.get("metadata") or {}).get("labels") or {}).get(QUEUE_LABEL)
        if queue:
            return True, queue
        if self.manage_jobs_without_queue_name:
            return True, self.default_queue
        return False, None

    def _webhook(self, kind: str, group: str, obj: dict[str, Any]) -> None:
        if kind == "Job" and group == "batch" and obj.get("metadata", {}).get("namespace") == self.namespace \
                and self.queue_of(obj)[0]:
            obj.setdefault("spec", {})["suspend"] = True

    def _gpus(self, job: dict[str, Any]) -> int:
        spec = job.get("spec") or {}
        per_pod = sum(int(((c.get("resources") or {}).get("limits") or {}).get(self.gpu_resource, 0))
                      for c in ((spec.get("template") or {}).get("spec") or {}).get("containers") or ())
        return per_pod * int(spec.get("parallelism") or 1)

    def _fits(self, w: Workload) -> bool:
        held = [x for x in self.workloads.values() if x.admitted and not x.finished]
        if self.max_jobs is not None and len(held) + 1 > self.max_jobs:
            return False
        return self.max_gpus is None or sum(x.gpus for x in held) + w.gpus <= self.max_gpus

    def _set_suspend(self, name: str, suspend: bool) -> None:
        self.batch.patch_namespaced_job(name, self.namespace, {"spec": {"suspend": suspend}},
                                        field_manager=FIELD_MANAGER, _content_type=_MERGE)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as exc:  # noqa: BLE001 - a test fails on recorded errors
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.poll_s)

    def sync(self) -> None:
        """One reconcile of every managed Job of the namespace."""
        with self._lock:
            jobs = self.server.objects("jobs", self.namespace, group="batch")
            jobs.sort(key=lambda j: (j["metadata"].get("creationTimestamp", ""), j["metadata"]["name"]))
            live = set()
            for job in jobs:
                managed, queue = self.queue_of(job)
                if not managed:
                    continue
                uid = job["metadata"]["uid"]
                live.add(uid)
                w = self.workloads.get(uid)
                if w is None:
                    self._seq += 1
                    w = self.workloads[uid] = Workload(job["metadata"]["name"], uid, queue, self._seq, self._gpus(job))
                if not w.finished and _finished(job):
                    w.finished, w.admitted = True, False
                    self.history.append(KueueAction("finished", w.job))
                if not w.finished and not w.admitted and not job["spec"].get("suspend"):
                    self._set_suspend(w.job, True)  # "Not admitted by cluster queue"
                    self.history.append(KueueAction("resuspended", w.job))
            for uid in set(self.workloads) - live:
                del self.workloads[uid]
            now = time.monotonic()
            for w in sorted(self.workloads.values(), key=lambda x: x.seq):
                if w.admitted or w.finished or w.queue not in self.queues:
                    continue
                # StrictFIFO: the head that does not fit blocks the queue; so does a preempted one while
                # its preemptor holds the quota (hold_s)
                if now < w.held_until or not self._fits(w):
                    break
                w.admitted = True
                self._set_suspend(w.job, False)  # "Job admitted, unsuspending"
                self.history.append(KueueAction("admitted", w.job))

    def preempt(self, job_name: str, *, hold_s: float = 0.5) -> None:
        """Evict the Job's Workload: suspend the Job, clear its startTime, requeue it after ``hold_s``."""
        with self._lock:
            w = next((x for x in self.workloads.values() if x.job == job_name), None)
            if w is None or not w.admitted:
                raise AssertionError(f"Job {job_name} holds no admission to preempt")
            w.admitted = False
            w.evictions += 1
            w.held_until = time.monotonic() + hold_s
            self._set_suspend(job_name, True)
            self.batch.patch_namespaced_job_status(job_name, self.namespace, {"status": {"startTime": None}},
                                                   field_manager=FIELD_MANAGER, _content_type=_MERGE)
            self.history.append(KueueAction("evicted", job_name))
