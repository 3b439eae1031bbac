"""Prometheus metrics of the stage controller, and the small HTTP server that serves them.

Run and stage states are one-hot gauges (``t2s_run_state{run,state} == 1`` for the current state,
like kube-state-metrics does for Jobs), so a dashboard can graph or alert on a state without a
number-to-state table. Each controller gets its own registry, which keeps tests that start several
controllers in one process independent.

    t2s_run_state{run,state}                 1 for the run's current state (running/succeeded/failed)
    t2s_stage_state{run,stage,state}         1 for the stage's current state (pending, queued, running,
                                             preempted, complete, published, failed, skipped)
    t2s_stage_duration_seconds{run,stage}    Job run time: completion - start (now - start while running)
    t2s_stage_transitions_total{run,stage,to} stage state changes seen by this controller process
    t2s_controller_reconciles_total{result}  reconcile passes (ok / error)
    t2s_controller_reconcile_seconds         time of one pass (list, store reads, writes)
    t2s_controller_relists_total             relists after a watch expired (410 Gone)
    t2s_controller_api_errors_total{operation} failed watch requests
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .decide import Plan, RunState, StageState

__all__ = ["ControllerMetrics", "MetricsServer"]


class ControllerMetrics:
    """The controller's metrics in a registry of their own; ``observe(plan)`` after every pass."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.run_state = Gauge("t2s_run_state", "1 for the run's current state, 0 for the others",
                               ["run", "state"], registry=r)
        self.stage_state = Gauge("t2s_stage_state", "1 for the stage's current state, 0 for the others",
                                 ["run", "stage", "state"], registry=r)
        self.stage_duration = Gauge("t2s_stage_duration_seconds",
                                    "Run time of the stage's Job: completion - start, or now - start while it runs",
                                    ["run", "stage"], registry=r)
        self.transitions = Counter("t2s_stage_transitions", "Stage state changes observed by the controller",
                                   ["run", "stage", "to"], registry=r)
        self.reconciles = Counter("t2s_controller_reconciles", "Reconcile passes by result", ["result"],
                                  registry=r)
        self.reconcile_seconds = Histogram("t2s_controller_reconcile_seconds", "Duration of one reconcile pass",
                                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                           registry=r)
        self.relists = Counter("t2s_controller_relists", "Relists after the Job watch expired (410 Gone)",
                               registry=r)
        self.api_errors = Counter("t2s_controller_api_errors", "Failed watch requests to the API server",
                                  ["operation"], registry=r)
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], StageState] = {}

    def observe(self, plan: Plan, *, now: datetime | None = None) -> None:
        """Set the run's and its stages' gauges from a plan; count state changes since the last one."""
        now = now or datetime.now(UTC)
        run = plan.run_id
        with self._lock:
            for state in RunState:
                self.run_state.labels(run=run, state=str(state)).set(1 if plan.state is state else 0)
            present = set()
            for sp in plan.stages:
                key = (run, sp.stage)
                present.add(key)
                for state in StageState:
                    self.stage_state.labels(run=run, stage=sp.stage, state=str(state)).set(
                        1 if sp.state is state else 0)
                start = sp.job.start_time if sp.job is not None else None
                if start is not None:
                    end = sp.job.completion_time or now
                    self.stage_duration.labels(run=run, stage=sp.stage).set(max(0.0, (end - start).total_seconds()))
                previous = self._last.get(key)
                if previous is not None and previous is not sp.state:
                    self.transitions.labels(run=run, stage=sp.stage, to=str(sp.state)).inc()
                self._last[key] = sp.state
            # A stage whose Job is gone (deleted, TTL) has no state any more: drop its series.
            for key in [k for k in self._last if k[0] == run and k not in present]:
                del self._last[key]
                for state in StageState:
                    self._remove(self.stage_state, run, key[1], str(state))
                self._remove(self.stage_duration, run, key[1])

    @staticmethod
    def _remove(metric: Any, *labels: str) -> None:
        try:
            metric.remove(*labels)
        except KeyError:
            pass

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """Serves ``/metrics`` (Prometheus text format) and ``/healthz`` (200 while ``healthy()``)."""

    def __init__(self, metrics: ControllerMetrics, *, port: int = 8080, host: str = "0.0.0.0",
                 healthy: Callable[[], bool] = lambda: True) -> None:
        self.metrics = metrics
        self.healthy = healthy
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    code, ctype, body = 200, CONTENT_TYPE_LATEST, outer.metrics.exposition()
                elif path == "/healthz":
                    ok = outer.healthy()
                    code, ctype, body = (200 if ok else 503), "text/plain", (b"ok\n" if ok else b"unhealthy\n")
                else:
                    code, ctype, body = 404, "text/plain", b"not found: try /metrics or /healthz\n"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Scrapes every few seconds would drown the controller's own log lines."""

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="t2s-metrics", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
