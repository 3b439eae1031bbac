"""The stage controller's I/O: watch Jobs, queue run keys, observe, ``decide``, apply.

Event handlers only enqueue a run key; a single worker reconciles one run at a time:

1. *observe*: a fresh list of the run's Jobs, of their pods and of its spec ConfigMap (never a
   cache, so a decision is never based on a state older than the last write), the Events the
   controller already recorded for the run, and which steps have a manifest in the artifact store;
2. ``decide(observed)`` (pure, see ``decide.py``);
3. *apply*: create the Jobs whose inputs are published, from their specs (a Job that already
   exists answers 409 and the run is simply reconciled again), record Events, annotate the run
   state. Every write uses the field manager ``t2s-controller``; none touches ``spec.suspend``,
   which belongs to the Job's queue (Kueue) or the Job controller.

Pods are listed, not watched: every pod change that moves a stage (a disruption, a replacement
pod that starts running) also changes its Job's ``status.active``/``ready``, which the Job watch
sees. The watch is only a trigger: it resumes from the last resourceVersion, relists on 410 Gone, and
every ``resync_s`` all known runs are reconciled anyway. API errors back off exponentially per
run. Because all state lives in the cluster (Job conditions, annotations, Events) and the store
(manifests), the controller can be killed and restarted at any moment.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import random
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from ..errors import BadInput
from ..logging import get_logger
from .decide import (
    FIELD_MANAGER,
    RUN_LABEL,
    STAGE_LABEL,
    Action,
    AnnotateJob,
    CreateStage,
    Observed,
    Plan,
    Reason,
    RecordEvent,
    SpecSource,
    job_view,
    plan_and_decide,
    pod_selector,
    pod_view,
    run_selector,
    spec_source,
    specs_selector,
    steps_to_check,
)
from .metrics import ControllerMetrics

__all__ = ["Controller", "ControllerConfig", "PublishedSteps", "RunQueue", "StoreManifests"]

_MERGE_PATCH = "application/merge-patch+json"
_STEP_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def _json(resp: Any) -> dict[str, Any]:
    """The body of an un-preloaded response, with its connection handed back to the pool."""
    try:
        return json.loads(resp.data)
    finally:
        resp.release_conn()


class ControllerConfig(BaseModel):
    """Knobs of the controller loop (``t2s controller`` flags map onto these)."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = Field(..., min_length=1, description="Namespace whose Jobs the controller manages.")
    run_id: str | None = Field(None, description="Manage only this run's Jobs; None manages every run in the "
                                                 "namespace (Jobs labelled text2sql-rlhf.dev/run-id).")
    resync_s: float = Field(30.0, gt=0, description="Seconds between reconciles of every known run even "
                                                    "without watch events (level-triggered safety net).")
    manifest_poll_s: float = Field(2.0, gt=0, description="While a Complete Job's manifest is missing, seconds "
                                                          "between store checks (a manifest raises no watch event).")
    watch: bool = Field(True, description="Watch Jobs for immediate reaction; false relies on resync_s alone "
                                          "(for API servers or proxies that break long requests).")
    watch_timeout_s: int = Field(300, gt=0, description="Server-side timeout of one watch request; the watch "
                                                        "is then resumed from its last resourceVersion.")
    request_timeout_s: float = Field(30.0, gt=0, description="Client timeout of one (non-watch) API request.")
    backoff_base_s: float = Field(0.5, gt=0, description="First retry delay after an API or store error.")
    backoff_max_s: float = Field(60.0, gt=0, description="Longest retry delay (doubling from backoff_base_s).")


class PublishedSteps(Protocol):
    """Which of a run's steps have a manifest; keeps ``decide`` free of store I/O."""

    def published(self, run_id: str, steps: Iterable[str]) -> frozenset[str]: ...


class StoreManifests:
    """``PublishedSteps`` backed by an artifact store: a step is published when
    ``runs/<run>/<step>/_manifest.json`` reads back as a valid manifest."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._log = get_logger(component="controller")

    def published(self, run_id: str, steps: Iterable[str]) -> frozenset[str]:
        from ..store.manifest import read_manifest

        found = set()
        for step in sorted(set(steps)):
            try:
                if read_manifest(self.store, f"runs/{run_id}/{step}") is not None:
                    found.add(step)
            except BadInput as exc:  # a corrupt manifest publishes nothing; someone must look at it
                self._log.error("corrupt manifest, step counts as unpublished", run=run_id, stage=step,
                                error=str(exc))
        return frozenset(found)


class RunQueue:
    """A delaying work queue of run keys: a key is queued at most once, at its earliest due time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, float] = {}
        self._seq = itertools.count()
        self._closed = False

    def add(self, key: str, after: float = 0.0) -> None:
        due = time.monotonic() + max(0.0, after)
        with self._cond:
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            heapq.heappush(self._heap, (due, next(self._seq), key))
            self._cond.notify()

    def get(self, timeout: float) -> str | None:
        """The next due key, or None after ``timeout`` seconds without one."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded by an earlier due time
                if self._heap and self._heap[0][0] <= now:
                    _, _, key = heapq.heappop(self._heap)
                    del self._due[key]
                    return key
                wait = deadline - now
                if self._heap:
                    wait = min(wait, self._heap[0][0] - now)
                if deadline - now <= 0:
                    return None
                self._cond.wait(timeout=max(0.0, wait))
            return None

    def close(self) -> None:
        """Make every current and later ``get`` return None at once (shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class PassResult:
    """What one reconcile pass saw and did."""

    plan: Plan
    actions: list[Action]
    requeue_after: float | None


class Controller:
    """Chains a run's stage Jobs. ``run()`` blocks until ``stop()``; ``reconcile(run)`` is one pass."""

    def __init__(self, api_client: Any, config: ControllerConfig, manifests: PublishedSteps, *,
                 metrics: ControllerMetrics | None = None) -> None:
        from kubernetes import client

        self.config = config
        self.manifests = manifests
        self.metrics = metrics or ControllerMetrics()
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.queue = RunQueue()
        self.log = get_logger(component="controller", namespace=config.namespace)
        self._stop = threading.Event()
        self._watch: Any = None
        self._watch_thread: threading.Thread | None = None
        self._worker_thread: threading.Thread | None = None
        self._known_runs: set[str] = {config.run_id} if config.run_id else set()
        self._runs_lock = threading.Lock()  # the watch thread adds runs while the worker resyncs them
        self._failures: dict[str, int] = {}
        self._instance = socket.gethostname()
        self._warned_events_forbidden = False
        self._warned_pods_forbidden = False

    # ---- lifecycle -------------------------------------------------------------------------

    def run(self) -> None:
        """Watch and reconcile until ``stop()`` is called."""
        self._worker_thread = threading.current_thread()
        loop = self._watch_loop if self.config.watch else self._stop.wait
        self._watch_thread = threading.Thread(target=loop, name="t2s-controller-watch", daemon=True)
        self._watch_thread.start()
        if self.config.run_id is None:
            self._discover_runs()
        for run_id in self.known_runs():
            self.queue.add(run_id)
        self.log.info("controller started", run=self.config.run_id or "*", resync_s=self.config.resync_s)
        try:
            self._work_loop()
        finally:
            self._stop.set()
            watch = self._watch
            if watch is not None:
                watch.stop()
            self._watch_thread.join(timeout=5)
            self.log.info("controller stopped")

    def start_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="t2s-controller", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        self.queue.close()
        watch = self._watch
        if watch is not None:
            watch.stop()

    def known_runs(self) -> list[str]:
        with self._runs_lock:
            return sorted(self._known_runs)

    def healthy(self) -> bool:
        """Liveness: both loops are alive (API outages are retried, not fatal)."""
        return (not self._stop.is_set() and self._worker_thread is not None and self._worker_thread.is_alive()
                and self._watch_thread is not None and self._watch_thread.is_alive())

    # ---- watch: a trigger only -------------------------------------------------------------

    def _enqueue_object(self, obj: Any) -> None:
        labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
        run_id = labels.get(RUN_LABEL)
        if run_id and (self.config.run_id is None or run_id == self.config.run_id):
            with self._runs_lock:
                self._known_runs.add(run_id)
            self.queue.add(run_id)

    def _backoff(self, attempt: int) -> float:
        delay = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** max(0, attempt - 1))
        return delay * random.uniform(0.8, 1.2)

    def _watch_loop(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        ns, selector = self.config.namespace, run_selector(self.config.run_id)
        resource_version: str | None = None
        attempt = 0
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resp = self.batch.list_namespaced_job(ns, label_selector=selector, _preload_content=False,
                                                          _request_timeout=self.config.request_timeout_s)
                    listed = _json(resp)
                    resource_version = listed["metadata"]["resourceVersion"]
                    for item in listed.get("items") or []:
                        self._enqueue_object(item)
                    if self.config.run_id:
                        self.queue.add(self.config.run_id)
                w = watch.Watch()
                self._watch = w
                if self._stop.is_set():
                    break
                opened, seen = time.monotonic(), 0
                for event in w.stream(self.batch.list_namespaced_job, ns, label_selector=selector,
                                      resource_version=resource_version, allow_watch_bookmarks=True,
                                      timeout_seconds=self.config.watch_timeout_s,
                                      _request_timeout=(self.config.request_timeout_s,
                                                        self.config.watch_timeout_s + 30)):
                    raw = event.get("raw_object") or {}
                    rv = (raw.get("metadata") or {}).get("resourceVersion")
                    if rv:
                        resource_version = str(rv)
                    if event.get("type") != "BOOKMARK":
                        self._enqueue_object(raw)
                    attempt, seen = 0, seen + 1
                    if self._stop.is_set():
                        break
                if not seen and time.monotonic() - opened < 1.0:
                    self._stop.wait(0.2)  # a server closing watches at once must not make us spin
            except ApiException as exc:
                if exc.status == 410:
                    self.metrics.relists.inc()
                    self.log.info("watch expired (410 Gone), relisting", resource_version=resource_version)
                    resource_version = None
                    continue
                attempt += 1
                self.metrics.api_errors.labels(operation="watch").inc()
                delay = self._backoff(attempt)
                self.log.warning("watch failed, retrying", status=exc.status, error=exc.reason, retry_in_s=round(delay, 2))
                self._stop.wait(delay)
            except Exception as exc:  # noqa: BLE001 - refused/reset connections, timeouts: keep watching
                if self._stop.is_set():
                    break
                attempt += 1
                self.metrics.api_errors.labels(operation="watch").inc()
                delay = self._backoff(attempt)
                self.log.warning("watch failed, retrying", error=f"{type(exc).__name__}: {exc}",
                                 retry_in_s=round(delay, 2))
                self._stop.wait(delay)
            finally:
                self._watch = None

    # ---- worker ----------------------------------------------------------------------------

    def _work_loop(self) -> None:
        next_resync = time.monotonic() + self.config.resync_s
        while not self._stop.is_set():
            key = self.queue.get(timeout=max(0.0, next_resync - time.monotonic()))
            if self._stop.is_set():
                break
            if time.monotonic() >= next_resync:
                if self.config.run_id is None:
                    self._discover_runs()
                for run_id in self.known_runs():
                    self.queue.add(run_id)
                next_resync = time.monotonic() + self.config.resync_s
            if key is not None:
                self._process(key)

    def _discover_runs(self) -> None:
        """Every run with a spec ConfigMap or Jobs in the namespace (multi-run mode). A new run has
        no Job until the controller creates one, so its spec ConfigMap is what makes it known."""
        timeout = self.config.request_timeout_s
        try:
            specs = _json(self.core.list_namespaced_config_map(self.config.namespace,
                                                               label_selector=specs_selector(None),
                                                               _preload_content=False, _request_timeout=timeout))
            jobs = _json(self.batch.list_namespaced_job(self.config.namespace, label_selector=run_selector(None),
                                                        _preload_content=False, _request_timeout=timeout))
        except Exception as exc:  # noqa: BLE001 - the next resync tries again
            self.log.warning("listing runs failed", error=f"{type(exc).__name__}: {exc}")
            return
        for item in [*(specs.get("items") or []), *(jobs.get("items") or [])]:
            self._enqueue_object(item)

    def _process(self, run_id: str) -> None:
        started = time.perf_counter()
        try:
            result = self.reconcile(run_id)
        except Exception as exc:  # noqa: BLE001 - API 5xx, lost connections, store outages: back off, retry
            attempt = self._failures[run_id] = self._failures.get(run_id, 0) + 1
            delay = self._backoff(attempt)
            self.metrics.reconciles.labels(result="error").inc()
            status = getattr(exc, "status", None)
            self.log.warning("reconcile failed, retrying", run=run_id, attempt=attempt, retry_in_s=round(delay, 2),
                             error=f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}", status=status)
            self.queue.add(run_id, after=delay)
            return
        finally:
            self.metrics.reconcile_seconds.observe(time.perf_counter() - started)
        self._failures.pop(run_id, None)
        self.metrics.reconciles.labels(result="ok").inc()
        if result.requeue_after is not None:
            self.queue.add(run_id, after=result.requeue_after)

    # ---- one pass --------------------------------------------------------------------------

    def observe(self, run_id: str) -> Observed:
        """The run's Jobs, spec ConfigMap and recorded Events (fresh from the API server) and its
        published steps."""
        ns = self.config.namespace
        timeout = self.config.request_timeout_s
        jobs_raw = _json(self.batch.list_namespaced_job(
            ns, label_selector=run_selector(run_id), _preload_content=False, _request_timeout=timeout))
        jobs = tuple(job_view(item) for item in jobs_raw.get("items") or [])
        source = self._spec_source(run_id)
        events = self._recorded_events(run_id)
        pods = self._stage_pods(run_id) if jobs else ()
        steps = steps_to_check(jobs, run_id, source)
        published = self.manifests.published(run_id, steps) if steps else frozenset()
        return Observed(run_id, jobs, published, events, source, pods)

    def _stage_pods(self, run_id: str) -> tuple[Any, ...] | None:
        """The run's pods (to see disruptions); None without RBAC to list them (403), where a
        disrupted stage reads as running until its replacement pod runs."""
        from kubernetes.client.exceptions import ApiException

        try:
            raw = _json(self.core.list_namespaced_pod(
                self.config.namespace, label_selector=pod_selector(run_id), _preload_content=False,
                _request_timeout=self.config.request_timeout_s))
        except ApiException as exc:
            if exc.status != 403:
                raise
            if not self._warned_pods_forbidden:
                self._warned_pods_forbidden = True
                self.log.warning("may not list pods (403): grant `list` on pods to show disrupted stages as "
                                 "preempted", run=run_id)
            return None
        return tuple(pod_view(item) for item in raw.get("items") or [])

    def _spec_source(self, run_id: str) -> SpecSource | None:
        """The run's spec ConfigMap, parsed; None when there is none (or, ambiguously, several)."""
        listed = _json(self.core.list_namespaced_config_map(
            self.config.namespace, label_selector=specs_selector(run_id), _preload_content=False,
            _request_timeout=self.config.request_timeout_s))
        items = listed.get("items") or []
        if len(items) > 1:
            names = sorted(i["metadata"]["name"] for i in items)
            self.log.error("several spec ConfigMaps for one run: creating no Job until one is left", run=run_id,
                           configmaps=",".join(names))
            return None
        return spec_source(items[0], run_id) if items else None

    def _recorded_events(self, run_id: str) -> frozenset[tuple[str, str]]:
        """(reason, message) of the Events this controller recorded for the run.

        Without RBAC to list Events (403) the controller still works: the stage-state and
        run-state annotations already keep it from recording an Event twice, except when it is
        killed between recording an Event and annotating the Job.
        """
        from kubernetes.client.exceptions import ApiException

        try:
            raw = _json(self.core.list_namespaced_event(
                self.config.namespace, label_selector=run_selector(run_id), _preload_content=False,
                _request_timeout=self.config.request_timeout_s))
        except ApiException as exc:
            if exc.status != 403:
                raise
            if not self._warned_events_forbidden:
                self._warned_events_forbidden = True
                self.log.warning("may not list Events (403): grant `list` on events to avoid duplicate Events "
                                 "after a restart", run=run_id)
            return frozenset()
        return frozenset(
            (str(e.get("reason", "")), str(e.get("message", "")))
            for e in raw.get("items") or []
            if FIELD_MANAGER in ((e.get("source") or {}).get("component"), e.get("reportingComponent")))

    def reconcile(self, run_id: str) -> PassResult:
        """One pass: observe, decide, apply. Raises on API and store errors (the caller backs off)."""
        observed = self.observe(run_id)
        current, actions = plan_and_decide(observed)
        lost_race = self.apply(run_id, actions)
        self.metrics.observe(current)
        requeue: float | None = None
        if lost_race:
            requeue = 0.0  # a Job appeared or vanished between our list and our write: look again at once
        elif current.waits_on_store:
            requeue = self.config.manifest_poll_s
        return PassResult(current, actions, requeue)

    def apply(self, run_id: str, actions: list[Action]) -> bool:
        """Perform ``actions``; returns True when a create lost a race (409/404) and needs a new pass."""
        from kubernetes.client.exceptions import ApiException

        ns = self.config.namespace
        timeout = self.config.request_timeout_s
        lost: set[str] = set()
        uids: dict[str, str] = {}
        for action in actions:
            if isinstance(action, CreateStage):
                try:
                    created = self.batch.create_namespaced_job(ns, dict(action.body), field_manager=FIELD_MANAGER,
                                                               _request_timeout=timeout)
                except ApiException as exc:
                    if exc.status == 409:  # it exists already (an earlier pass, or a second controller)
                        lost.add(action.job)
                        self.log.info("Job exists already; reconciling again", run=run_id, stage=action.stage,
                                      job=action.job)
                        continue
                    raise
                uids[action.job] = created.metadata.uid
                self.log.info("stage started", run=run_id, stage=action.stage, job=action.job)
            elif isinstance(action, RecordEvent):
                if action.job in lost and action.reason is Reason.STAGE_STARTED:
                    continue
                if not action.job_uid and action.job in uids:  # the Job this pass created
                    action = dataclasses.replace(action, job_uid=uids[action.job])
                self.core.create_namespaced_event(ns, self._event_body(run_id, action), _request_timeout=timeout)
                log = self.log.warning if action.type == "Warning" else self.log.info
                log("event recorded", run=run_id, stage=action.stage, job=action.job, reason=str(action.reason),
                    message=action.message)
            elif isinstance(action, AnnotateJob):
                if action.job in lost:
                    continue
                body = {"metadata": {"annotations": dict(action.annotations)}}
                try:
                    self.batch.patch_namespaced_job(action.job, ns, body, field_manager=FIELD_MANAGER,
                                                    _content_type=_MERGE_PATCH, _request_timeout=timeout)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    lost.add(action.job)
        return bool(lost)

    def _event_body(self, run_id: str, ev: RecordEvent) -> dict[str, Any]:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        labels = {RUN_LABEL: run_id}
        if ev.stage and set(ev.stage) <= _STEP_NAME_CHARS and len(ev.stage) <= 63:
            labels[STAGE_LABEL] = ev.stage
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{ev.job}.", "namespace": self.config.namespace, "labels": labels},
            "involvedObject": {"apiVersion": "batch/v1" if ev.kind == "Job" else "v1", "kind": ev.kind,
                               "name": ev.job,
                               "namespace": self.config.namespace, "uid": ev.job_uid},
            "reason": str(ev.reason),
            "message": ev.message[:1024],
            "type": str(ev.type),
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
