"""The controller against the fake API server, through the real ``kubernetes`` client.

The tests play the Job controller (patching ``/status``) and the stages (publishing manifests into
a LocalStore); the controller runs in a thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.conftest import REPO_ROOT
from tests.k8s.conftest import (
    NAMESPACE,
    create_run,
    events,
    job,
    job_name,
    publish_step,
    stage_job,
    suspend_patches,
    wait_until,
)
from tests.k8s.fake_apiserver import HookResult, set_job_complete, set_job_failed, set_job_running
from text2sql_core.graph import STEPS, Step
from text2sql_core.k8s.decide import (
    FAILED_STAGE_ANNOTATION,
    FIELD_MANAGER,
    RUN_STATE_ANNOTATION,
)
from text2sql_core.k8s.metrics import MetricsServer

CHAIN = (Step("prepare", "prepare"), Step("sft", "sft", ("prepare",)), Step("rm", "rm", ("sft",)))


def started(server, name: str) -> bool:
    return job(server, name)["spec"]["suspend"] is False


def finish(batch, store, run_id: str, step: str, **metrics) -> None:
    """A stage's pod runs, publishes its manifest, exits 0; the Job turns Complete."""
    name = job_name(run_id, step)
    set_job_running(batch, NAMESPACE, name)
    publish_step(store, run_id, step, metrics)
    set_job_complete(batch, NAMESPACE, name)


def test_full_chain_starts_each_stage_once_after_its_inputs(apiserver, batch, store, start_controller):
    run_id = "chain"
    create_run(batch, run_id)
    controller = start_controller(run_id=run_id)
    for step in STEPS:
        name = job_name(run_id, step.name)
        wait_until(lambda name=name: started(apiserver, name), what=f"{step.name} to start")
        finish(batch, store, run_id, step.name, loss=0.5)
    last = job_name(run_id, STEPS[-1].name)
    wait_until(lambda: all(job(apiserver, job_name(run_id, s.name))["metadata"]["annotations"].get(RUN_STATE_ANNOTATION)
                           == "succeeded" for s in STEPS), what="run-state succeeded on every Job")

    # prepare is rendered unsuspended; every other Job was unsuspended exactly once, by the controller
    assert suspend_patches(apiserver, job_name(run_id, "prepare")) == []
    completed_at = {r.name: r.time for r in apiserver.requests_where(verb="patch", subresource="status", status=200)
                    if r.body["status"].get("succeeded")}
    for step in STEPS[1:]:
        patches = suspend_patches(apiserver, job_name(run_id, step.name))
        assert len(patches) == 1, f"{step.name} unsuspended {len(patches)} times"
        assert patches[0].field_manager == FIELD_MANAGER
        for upstream in step.inputs:  # never before an upstream Job was Complete
            assert patches[0].time > completed_at[job_name(run_id, upstream)], (step.name, upstream)
    assert [m["manager"] for m in job(apiserver, last)["metadata"]["managedFields"]] == [FIELD_MANAGER]
    assert len(events(apiserver, "RunSucceeded")) == 1
    started_events = sorted(e["involvedObject"]["name"] for e in events(apiserver, "StageStarted"))
    assert started_events == sorted(job_name(run_id, s.name) for s in STEPS)
    wait_until(lambda: controller.metrics.run_state.labels(run=run_id, state="succeeded")._value.get() == 1,
               what="t2s_run_state succeeded")


def test_failed_stage_fails_the_run_and_starts_nothing_after_it(apiserver, batch, store, start_controller):
    run_id = "fails"
    create_run(batch, run_id)
    controller = start_controller(run_id=run_id)
    finish(batch, store, run_id, "prepare")
    sft = job_name(run_id, "sft")
    wait_until(lambda: started(apiserver, sft), what="sft to start")
    set_job_running(batch, NAMESPACE, sft)
    set_job_failed(batch, NAMESPACE, sft, reason="PodFailurePolicy", message="exit code 2")

    wait_until(lambda: len(events(apiserver, "RunFailed")) == 1, what="RunFailed event")
    wait_until(lambda: all(job(apiserver, job_name(run_id, s.name))["metadata"]["annotations"].get(RUN_STATE_ANNOTATION)
                           == "failed" for s in STEPS), what="run-state failed on every Job")
    for s in STEPS:
        annotations = job(apiserver, job_name(run_id, s.name))["metadata"]["annotations"]
        assert annotations[FAILED_STAGE_ANNOTATION] == "sft"
    (stage_failed,) = events(apiserver, "StageFailed")
    assert stage_failed["type"] == "Warning" and "exit code 2" in stage_failed["message"]
    # even when an independent step's inputs are published later, nothing starts any more
    publish_step(store, run_id, "sft")
    time.sleep(1.0)
    assert [r.name for r in suspend_patches(apiserver)] == [sft]
    assert controller.metrics.stage_state.labels(run=run_id, stage="rm", state="skipped")._value.get() == 1
    assert len(events(apiserver, "RunFailed")) == 1  # recorded once, however many passes ran


def test_complete_job_without_manifest_is_waited_for(apiserver, batch, store, start_controller):
    run_id = "nomani"
    create_run(batch, run_id, CHAIN)
    start_controller(run_id=run_id)
    prepare, sft = job_name(run_id, "prepare"), job_name(run_id, "sft")
    set_job_running(batch, NAMESPACE, prepare)
    set_job_complete(batch, NAMESPACE, prepare)  # Complete, but nothing published
    wait_until(lambda: events(apiserver, "StageWaiting"), what="StageWaiting event")
    time.sleep(1.0)  # several manifest polls
    assert not started(apiserver, sft)
    assert len(events(apiserver, "StageWaiting")) == 1
    publish_step(store, run_id, "prepare")  # no Job event follows: the controller must poll the store
    wait_until(lambda: started(apiserver, sft), what="sft to start once the manifest exists")
    assert len(suspend_patches(apiserver, sft)) == 1


def test_watch_expiry_410_relists_and_the_chain_continues(apiserver, batch, store, start_controller):
    run_id = "gone"
    create_run(batch, run_id, CHAIN)
    controller = start_controller(run_id=run_id, resync_s=600)  # only the watch can trigger in time
    wait_until(lambda: apiserver.requests_where(verb="watch", resource="jobs"), what="a watch")

    def unavailable(request):
        return HookResult(503, "ServiceUnavailable", "apiserver restarting") if request.verb == "watch" else None

    # The watch breaks while the server is down; meanwhile the history the controller would resume
    # from is compacted away, so its resume is answered with 410 Gone.
    apiserver.add_hook("before", unavailable)
    apiserver.expire_watches()
    batch.patch_namespaced_job(job_name(run_id, "rm"), NAMESPACE, {"metadata": {"labels": {"touched": "yes"}}})
    apiserver.compact()
    apiserver.remove_hook(unavailable)
    wait_until(lambda: controller.metrics.relists._value.get() >= 1, what="a relist after 410")
    finish(batch, store, run_id, "prepare")
    wait_until(lambda: started(apiserver, job_name(run_id, "sft")), what="sft to start after the relist")
    watches = apiserver.requests_where(verb="watch", resource="jobs")
    assert len(watches) >= 3  # the first, the one answered 410, the one after the relist


def test_unexpected_job_of_the_run_gets_a_warning_and_is_left_alone(apiserver, batch, store, start_controller):
    run_id = "foreign"
    create_run(batch, run_id, CHAIN)
    intruder = stage_job(run_id, "debug", 9, ("prepare",), suspend=True,
                         extra_labels={"app.kubernetes.io/component": "debug-shell"})
    intruder["metadata"]["name"] = "debug-shell"
    batch.create_namespaced_job(NAMESPACE, intruder)
    twin = stage_job(run_id, "rm", 2, ("sft",), suspend=True)
    twin["metadata"]["name"] = "rm-twin"  # a second Job claiming stage rm
    batch.create_namespaced_job(NAMESPACE, twin)
    start_controller(run_id=run_id)
    finish(batch, store, run_id, "prepare")
    finish_sft = job_name(run_id, "sft")
    wait_until(lambda: started(apiserver, finish_sft), what="sft to start")
    finish(batch, store, run_id, "sft")
    wait_until(lambda: {e["involvedObject"]["name"] for e in events(apiserver, "JobConflict")}
               == {"debug-shell", "rm-twin", job_name(run_id, "rm")}, what="JobConflict events")
    time.sleep(0.5)
    conflicts = events(apiserver, "JobConflict")
    assert all(e["type"] == "Warning" for e in conflicts) and len(conflicts) == 3
    for name in ("debug-shell", "rm-twin", job_name(run_id, "rm")):
        assert apiserver.requests_where(verb="patch", resource="jobs", name=name) == []
        assert job(apiserver, name)["spec"]["suspend"] is True
    assert "app.kubernetes.io/component" in next(e["message"] for e in conflicts
                                                 if e["involvedObject"]["name"] == "debug-shell")


def test_api_errors_back_off_and_recover(apiserver, batch, store, start_controller):
    run_id = "flaky"
    create_run(batch, run_id, CHAIN)
    failures = {"left": 4}
    lock = threading.Lock()

    def flaky(request):
        if request.verb == "list" and request.resource == "jobs":
            with lock:
                if failures["left"] > 0:
                    failures["left"] -= 1
                    return HookResult(500, "InternalError", "etcd is having a bad day")
        return None

    apiserver.add_hook("before", flaky)
    controller = start_controller(run_id=run_id)
    finish(batch, store, run_id, "prepare")
    wait_until(lambda: started(apiserver, job_name(run_id, "sft")), what="sft to start despite API errors")
    assert failures["left"] == 0
    assert controller.metrics.reconciles.labels(result="error")._value.get() >= 1


def test_metrics_and_healthz_are_served(apiserver, batch, store, start_controller):
    run_id = "metrics"
    create_run(batch, run_id, CHAIN)
    controller = start_controller(run_id=run_id)
    server = MetricsServer(controller.metrics, port=0, host="127.0.0.1", healthy=controller.healthy).start()
    try:
        finish(batch, store, run_id, "prepare")
        wait_until(lambda: started(apiserver, job_name(run_id, "sft")), what="sft to start")
        set_job_running(batch, NAMESPACE, job_name(run_id, "sft"))

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
                return resp.read().decode()

        def sft_running() -> str | None:
            text = scrape()
            return text if 't2s_stage_state{run="metrics",stage="sft",state="running"} 1.0' in text else None

        text = wait_until(sft_running, what="sft running in /metrics")
        assert 't2s_run_state{run="metrics",state="running"} 1.0' in text
        assert 't2s_stage_state{run="metrics",stage="prepare",state="published"} 1.0' in text
        assert 't2s_stage_duration_seconds{run="metrics",stage="prepare"}' in text
        assert 't2s_stage_transitions_total{run="metrics",stage="sft",to="running"} 1.0' in text
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as resp:
            assert resp.status == 200
        controller.stop()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
        assert err.value.code == 503
    finally:
        server.stop()


# ---- restart safety: the real CLI in a subprocess, killed at every transition ----------------

KILL_POINTS = ("before-patch", "after-patch", "after-event")


@pytest.mark.slow
def test_controller_killed_at_every_transition_starts_each_stage_exactly_once(apiserver, batch, store, tmp_path):
    run_id = "restart"
    create_run(batch, run_id)
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
    config = tmp_path / "run.yaml"
    config.write_text(f"run_id: {run_id}\nstore:\n  kind: local\n  local:\n    path: {store.root}\n")
    log = (tmp_path / "controller.log").open("ab")
    stage_of = {job_name(run_id, s.name): s.name for s in STEPS}
    # every stage the controller starts is killed once, cycling through the moments of a transition
    plan = {s.name: KILL_POINTS[i % len(KILL_POINTS)] for i, s in enumerate(STEPS[1:])}
    killed: list[tuple[str, str]] = []
    state = {"proc": None, "starts": 0}
    lock = threading.Lock()

    def start() -> None:
        state["proc"] = subprocess.Popen(
            [sys.executable, "-m", "text2sql_core.cli", "controller", "--namespace", NAMESPACE, "--run-id", run_id,
             "--config", str(config), "--kubeconfig", str(kubeconfig), "--metrics-port", "-1",
             "--resync-seconds", "5", "--manifest-poll-seconds", "0.2"],
            cwd=REPO_ROOT, stdout=log, stderr=log, env={**os.environ, "T2S_LOG_FORMAT": "json"})
        state["starts"] += 1

    def kill_if_planned(request, point: str) -> bool:
        if request.verb == "patch" and request.resource == "jobs" and request.subresource is None \
                and ((request.body or {}).get("spec") or {}).get("suspend") is False:
            stage = stage_of.get(request.name)
        elif request.verb == "create" and request.resource == "events" and point == "after-event" \
                and (request.body or {}).get("reason") == "StageStarted":
            stage = stage_of.get(request.body["involvedObject"]["name"])
        else:
            return False
        with lock:
            if stage is None or plan.get(stage) != point or any(s == stage for s, _ in killed):
                return False
            killed.append((stage, point))
            state["proc"].kill()
            state["proc"].wait()
        return True

    def before(request):
        if kill_if_planned(request, "before-patch"):
            return HookResult(503, "ServiceUnavailable", "the client died before this write")
        return None

    def after(request):
        kill_if_planned(request, "after-patch") or kill_if_planned(request, "after-event")

    apiserver.add_hook("before", before)
    apiserver.add_hook("after", after)

    def alive_and(predicate):
        def check():
            with lock:
                if state["proc"].poll() is not None:
                    start()  # the Deployment's restart, at once
            return predicate()
        return check

    start()
    try:
        for step in STEPS:
            name = job_name(run_id, step.name)
            wait_until(alive_and(lambda name=name: started(apiserver, name)), timeout=60,
                       what=f"{step.name} to start")
            finish(batch, store, run_id, step.name)
        wait_until(alive_and(lambda: len(events(apiserver, "RunSucceeded")) == 1), timeout=60, what="RunSucceeded")
    finally:
        state["proc"].terminate()
        try:
            assert state["proc"].wait(timeout=10) == 0, "controller did not exit cleanly on SIGTERM"
        finally:
            log.close()

    assert sorted(killed) == sorted(plan.items())
    assert state["starts"] == len(plan) + 1
    for step in STEPS[1:]:
        assert len(suspend_patches(apiserver, job_name(run_id, step.name))) == 1, step.name
    started_events = sorted(e["involvedObject"]["name"] for e in events(apiserver, "StageStarted"))
    assert started_events == sorted(job_name(run_id, s.name) for s in STEPS)
    assert len(events(apiserver, "RunSucceeded")) == 1


def test_controller_cli_once_and_bad_input(apiserver, batch, store, tmp_path, capsys, monkeypatch):
    from text2sql_core.cli import main

    run_id = "cli"
    create_run(batch, run_id, CHAIN)
    finish(batch, store, run_id, "prepare")
    config = tmp_path / "run.yaml"
    config.write_text(f"run_id: {run_id}\nstore:\n  kind: local\n  local:\n    path: {store.root}\n")
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
    common = ["--config", str(config), "--kubeconfig", str(kubeconfig)]
    assert main(["controller", "--namespace", NAMESPACE, "--run-id", run_id, *common, "--once"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"run {run_id}: running") and "prepare" in out
    assert started(apiserver, job_name(run_id, "sft"))

    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert main(["controller", "--run-id", run_id, *common]) == 2
    assert "--namespace" in capsys.readouterr().err
    assert main(["controller", "--namespace", NAMESPACE, "--run-id", "Not_A_Label", *common]) == 2
    assert "--run-id" in capsys.readouterr().err
    monkeypatch.setenv("T2S_METRICS_PORT", "eighty")
    assert main(["controller", "--namespace", NAMESPACE, "--run-id", run_id, *common]) == 2
    assert "T2S_METRICS_PORT" in capsys.readouterr().err
    assert main(["controller", "--namespace", NAMESPACE, "--config", str(tmp_path / "missing.yaml")]) == 2


def test_a_start_based_on_a_stale_view_is_refused_and_retried(apiserver, batch, store, kube):
    from text2sql_core.k8s.controller import Controller, ControllerConfig, StoreManifests
    from text2sql_core.k8s.decide import StartStage, plan_and_decide

    run_id = "race"
    create_run(batch, run_id, CHAIN)
    finish(batch, store, run_id, "prepare")
    controller = Controller(kube, ControllerConfig(namespace=NAMESPACE, run_id=run_id), StoreManifests(store))
    _, actions = plan_and_decide(controller.observe(run_id))
    sft = job_name(run_id, "sft")
    assert any(isinstance(a, StartStage) and a.job == sft for a in actions)
    # someone changes the Job between the controller's list and its patch
    batch.patch_namespaced_job(sft, NAMESPACE, {"metadata": {"labels": {"edited": "yes"}}},
                               _content_type="application/merge-patch+json")
    assert controller.apply(run_id, actions) is True  # lost the race: reconcile again
    assert not started(apiserver, sft)
    assert not [e for e in events(apiserver, "StageStarted") if e["involvedObject"]["name"] == sft]
    result = controller.reconcile(run_id)
    assert started(apiserver, sft) and len(suspend_patches(apiserver, sft)) == 1
    assert result.requeue_after is None


@pytest.mark.parametrize("use_watch", [True, False], ids=["watch", "resync-only"])
def test_one_controller_for_every_run_of_the_namespace(apiserver, batch, store, start_controller, use_watch):
    runs = ("multi-a", "multi-b")
    for run_id in runs:
        create_run(batch, run_id, CHAIN)
    start_controller(run_id=None, watch=use_watch, resync_s=0.3)
    for run_id in runs:
        finish(batch, store, run_id, "prepare")
    for run_id in runs:
        wait_until(lambda run_id=run_id: started(apiserver, job_name(run_id, "sft")), what=f"{run_id} sft to start")
    finish(batch, store, "multi-b", "sft")
    wait_until(lambda: started(apiserver, job_name("multi-b", "rm")), what="multi-b rm to start")
    assert not started(apiserver, job_name("multi-a", "rm"))
    assert len(suspend_patches(apiserver)) == 3


def test_works_without_permission_to_list_events(apiserver, batch, store, start_controller):
    run_id = "norbac"
    create_run(batch, run_id, CHAIN)
    apiserver.add_hook("before", lambda r: HookResult(403, "Forbidden", "events is forbidden")
                       if r.verb == "list" and r.resource == "events" else None)
    start_controller(run_id=run_id)
    finish(batch, store, run_id, "prepare")
    wait_until(lambda: started(apiserver, job_name(run_id, "sft")), what="sft to start without listing Events")
    time.sleep(0.5)  # further passes: the annotations keep Events from repeating
    assert len([e for e in events(apiserver, "StageStarted")
                if e["involvedObject"]["name"] == job_name(run_id, "sft")]) == 1
