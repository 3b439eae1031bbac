"""Fixtures for the controller tests: the fake API server, a run's Jobs as the chart renders them,
a local artifact store, and a controller running in a thread."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.fake_apiserver import FakeApiServer
from text2sql_core.graph import STEPS
from text2sql_core.k8s.controller import Controller, ControllerConfig, StoreManifests
from text2sql_core.k8s.decide import (
    COMPONENT_LABEL,
    DEPENDS_ON_ANNOTATION,
    ORDER_ANNOTATION,
    RUN_LABEL,
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


def create_run(batch: Any, run_id: str, steps: Any = STEPS, namespace: str = NAMESPACE) -> list[str]:
    """Create a whole run's Jobs: every Job suspended except those without upstream steps."""
    names = []
    for order, step in enumerate(steps):
        batch.create_namespaced_job(namespace, stage_job(run_id, step.name, order, step.inputs,
                                                         suspend=bool(step.inputs)))
        names.append(job_name(run_id, step.name))
    return names


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


def suspend_patches(server: FakeApiServer, name: str | None = None) -> list[Any]:
    """Successful PATCHes that flipped a Job's spec.suspend to false."""
    return [r for r in server.requests_where(verb="patch", resource="jobs", subresource=None, status=200)
            if isinstance(r.body, dict) and (r.body.get("spec") or {}).get("suspend") is False
            and (name is None or r.name == name)]


def job(server: FakeApiServer, name: str) -> dict[str, Any]:
    obj = server.get_object("jobs", NAMESPACE, name, group="batch")
    assert obj is not None, f"Job {name} not found"
    return obj


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
