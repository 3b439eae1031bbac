"""Fixtures for the controller tests: the fake API server, a run's Jobs as the chart renders them,
a local artifact store, and a controller running in a thread."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.fake_apiserver import FakeApiServer
from tests.k8s.fake_kueue import QUEUE_LABEL
from text2sql_core.graph import STEPS
from text2sql_core.k8s.controller import Controller, ControllerConfig, StoreManifests
from text2sql_core.k8s.decide import (
    COMPONENT_LABEL,
    DEPENDS_ON_ANNOTATION,
    FIELD_MANAGER,
    ORDER_ANNOTATION,
    RUN_LABEL,
    SPECS_COMPONENT,
    STAGE_COMPONENT,
    STAGE_LABEL,
)
from text2sql_core.store import LocalStore
from text2sql_core.store.manifest import publish

NAMESPACE = "t2s"


def job_name(run_id: str, step: str) -> str:
    return f"t2s-{run_id}-{step.replace('_', '-')}"


def stage_job(run_id: str, step: str, order: int, depends_on: tuple[str, ...], *, suspend: bool,
              extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A stage Job following the chart's conventions (labels, order and depends-on annotations)."""
    labels = {"app.kubernetes.io/name": "text2sql-rlhf", "app.kubernetes.io/instance": "t2s",
              RUN_LABEL: run_id, STAGE_LABEL: step, COMPONENT_LABEL: STAGE_COMPONENT}
    labels.update(extra_labels or {})
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name(run_id, step), "labels": labels,
                     "annotations": {ORDER_ANNOTATION: str(order), DEPENDS_ON_ANNOTATION: ",".join(depends_on)}},
        "spec": {"suspend": suspend, "backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "stage", "image": "text2sql-rlhf:test",
                            "command": ["t2s", "stage", "run", step, "--config", "/etc/t2s/run.yaml"]}]}}},
    }


def specs_name(run_id: str) -> str:
    return f"t2s-{run_id}-stages"


def spec_configmap(run_id: str, steps: Any = STEPS, *, queue: str | None = None) -> dict[str, Any]:
    """A run's spec ConfigMap as the chart renders it: one Job per step, labelled for ``queue`` (Kueue)
    and created suspended when a queue admits it, unsuspended otherwise."""
    data = {}
    for order, step in enumerate(steps):
        extra = {QUEUE_LABEL: queue} if queue else None
        data[f"{step.name}.yaml"] = yaml.safe_dump(stage_job(run_id, step.name, order, step.inputs,
                                                             suspend=queue is not None, extra_labels=extra))
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": specs_name(run_id), "labels": {RUN_LABEL: run_id, COMPONENT_LABEL: SPECS_COMPONENT,
                                                                "app.kubernetes.io/instance": "t2s"}},
            "data": data}


def create_run(batch: Any, run_id: str, steps: Any = STEPS, namespace: str = NAMESPACE, *,
               queue: str | None = None) -> list[str]:
    """Install a whole run the way the chart does: its spec ConfigMap (the controller creates the Jobs).
    Returns the Job names, in step order."""
    from kubernetes import client

    client.CoreV1Api(batch.api_client).create_namespaced_config_map(namespace, spec_configmap(run_id, steps,
                                                                                             queue=queue))
    return [job_name(run_id, s.name) for s in steps]


def create_jobs(batch: Any, run_id: str, steps: Any = STEPS, namespace: str = NAMESPACE) -> list[str]:
    """Every Job of a run at once, as if created and all but the first held by a queue (for ``t2s status``)."""
    for order, step in enumerate(steps):
        batch.create_namespaced_job(namespace, stage_job(run_id, step.name, order, step.inputs,
                                                         suspend=bool(step.inputs)))
    return [job_name(run_id, s.name) for s in steps]


def publish_step(store: LocalStore, run_id: str, step: str, metrics: dict[str, Any] | None = None) -> None:
    """Publish a step's output the way the stage runner does (files first, manifest last)."""
    from datetime import UTC, datetime

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "output.txt").write_text(f"{run_id}/{step}\n")
        publish(store, f"runs/{run_id}/{step}", Path(tmp), run_id=run_id, step=step, kind=step,
                config_hash="0" * 16, metrics=metrics or {}, started_at=datetime.now(UTC))


def wait_until(predicate: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def creates(server: FakeApiServer, name: str | None = None) -> list[Any]:
    """Successful Job creates by the controller (of Job ``name``)."""
    return [r for r in server.requests_where(verb="create", resource="jobs", status=201)
            if r.field_manager == FIELD_MANAGER and (name is None or (r.body or {})["metadata"]["name"] == name)]


def controller_spec_writes(server: FakeApiServer) -> list[Any]:
    """Controller writes that touched a Job's spec other than by creating it (must stay empty)."""
    return [r for r in server.requests_where(resource="jobs") if r.verb in ("patch", "update")
            and r.field_manager == FIELD_MANAGER and isinstance(r.body, dict) and "spec" in r.body]


def job(server: FakeApiServer, name: str) -> dict[str, Any]:
    obj = server.get_object("jobs", NAMESPACE, name, group="batch")
    assert obj is not None, f"Job {name} not found"
    return obj


def job_exists(server: FakeApiServer, name: str) -> bool:
    return server.get_object("jobs", NAMESPACE, name, group="batch") is not None


def events(server: FakeApiServer, reason: str | None = None, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    return [e for e in server.objects("events", namespace) if reason is None or e.get("reason") == reason]


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    with FakeApiServer(bookmark_interval_s=0.5) as server:
        yield server


@pytest.fixture
def kube(apiserver: FakeApiServer) -> Iterator[Any]:
    api = apiserver.api_client()
    yield api
    api.close()


@pytest.fixture
def batch(kube: Any) -> Any:
    from kubernetes import client

    return client.BatchV1Api(kube)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def start_controller(kube: Any, store: LocalStore) -> Iterator[Callable[..., Controller]]:
    """Start controllers in threads (``start_controller(run_id=...)``); all are stopped at teardown."""
    running: list[tuple[Controller, Any]] = []

    def start(**overrides: Any) -> Controller:
        settings = {"namespace": NAMESPACE, "resync_s": 5.0, "manifest_poll_s": 0.2, "watch_timeout_s": 30,
                    "backoff_base_s": 0.05, "backoff_max_s": 0.5, **overrides}
        controller = Controller(kube, ControllerConfig(**settings), StoreManifests(store))
        running.append((controller, controller.start_in_thread()))
        return controller

    yield start
    for controller, thread in running:
        controller.stop()
        thread.join(timeout=10)
        assert not thread.is_alive(), "controller thread did not stop"
