"""The controller against the fake API server, through the real ``kubernetes`` client.

The tests install a run as the chart does (its spec ConfigMap), play the Job controller (patching
``/status``) and the stages (publishing manifests into a LocalStore); the controller runs in a
thread and creates the Jobs. The Kueue tests add the fake Kueue, which owns ``spec.suspend``.
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
    controller_spec_writes,
    create_run,
    creates,
    events,
    job,
    job_exists,
    job_name,
    publish_step,
    specs_name,
    stage_job,
    wait_until,
)
from tests.k8s.fake_apiserver import HookResult, set_job_complete, set_job_failed, set_job_running
from tests.k8s.fake_kueue import FakeKueue
from text2sql_core.graph import STEPS, Step
from text2sql_core.k8s.decide import (
    FAILED_STAGE_ANNOTATION,
    FIELD_MANAGER,
    PREEMPTIONS_ANNOTATION,
    RUN_STATE_ANNOTATION,
    STAGE_STATE_ANNOTATION,
)
from text2sql_core.k8s.metrics import MetricsServer

CHAIN = (Step("prepare", "prepare"), Step("sft", "sft", ("prepare",)), Step("rm", "rm", ("sft",)))
QUEUE = "gpu"


def started(server, name: str) -> bool:
    """The Job exists and runs (created by the controller and, under Kueue, admitted)."""
    obj = server.get_object("jobs", NAMESPACE, name, group="batch")
    return obj is not None and obj["spec"]["suspend"] is False


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

    # every Job was created exactly once, by the controller, from its spec, never before its inputs
    completed_at = {r.name: r.time for r in apiserver.requests_where(verb="patch", subresource="status", status=200)
                    if r.body["status"].get("succeeded")}
    spec_map = apiserver.get_object("configmaps", NAMESPACE, specs_name(run_id))
    for step in STEPS:
        made = creates(apiserver, job_name(run_id, step.name))
        assert len(made) == 1, f"{step.name} created {len(made)} times"
        for upstream in step.inputs:
            assert made[0].time > completed_at[job_name(run_id, upstream)], (step.name, upstream)
        owner = job(apiserver, job_name(run_id, step.name))["metadata"]["ownerReferences"]
        assert owner == [{"apiVersion": "v1", "kind": "ConfigMap", "name": specs_name(run_id),
                          "uid": spec_map["metadata"]["uid"]}]
    assert controller_spec_writes(apiserver) == []
    assert [m["manager"] for m in job(apiserver, last)["metadata"]["managedFields"]] == [FIELD_MANAGER]
    assert len(events(apiserver, "RunSucceeded")) == 1
    started_events = sorted(e["involvedObject"]["name"] for e in events(apiserver, "StageStarted"))
    assert started_events == sorted(job_name(run_id, s.name) for s in STEPS)
    assert all(e["involvedObject"]["uid"] for e in events(apiserver, "StageStarted"))
    wait_until(lambda: controller.metrics.run_state.labels(run=run_id, state="succeeded")._value.get() == 1,
               what="t2s_run_state succeeded")
    # `helm uninstall` deletes the spec ConfigMap; the garbage collector removes the Jobs it owns
    from kubernetes import client

    client.CoreV1Api(batch.api_client).delete_namespaced_config_map(specs_name(run_id), NAMESPACE)
    assert not any(job_exists(apiserver, job_name(run_id, s.name)) for s in STEPS)


def test_failed_stage_fails_the_run_and_starts_nothing_after_it(apiserver, batch, store, start_controller):
    run_id = "fails"
    create_run(batch, run_id)
    controller = start_controller(run_id=run_id)
    wait_until(lambda: started(apiserver, job_name(run_id, "prepare")), what="prepare to start")
    finish(batch, store, run_id, "prepare")
    sft = job_name(run_id, "sft")
    wait_until(lambda: started(apiserver, sft), what="sft to start")
    set_job_running(batch, NAMESPACE, sft)
    set_job_failed(batch, NAMESPACE, sft, reason="PodFailurePolicy", message="exit code 2")

    wait_until(lambda: len(events(apiserver, "RunFailed")) == 1, what="RunFailed event")
    made = ("prepare", "sft")
    wait_until(lambda: all(job(apiserver, job_name(run_id, s))["metadata"]["annotations"].get(RUN_STATE_ANNOTATION)
                           == "failed" for s in made), what="run-state failed on every Job")
    for s in made:
        annotations = job(apiserver, job_name(run_id, s))["metadata"]["annotations"]
        assert annotations[FAILED_STAGE_ANNOTATION] == "sft"
    (stage_failed,) = events(apiserver, "StageFailed")
    assert stage_failed["type"] == "Warning" and "exit code 2" in stage_failed["message"]
    # even when an independent step's inputs are published later, nothing starts any more
    publish_step(store, run_id, "sft")
    time.sleep(1.0)
    assert sorted(r.body["metadata"]["name"] for r in creates(apiserver)) == sorted([job_name(run_id, "prepare"), sft])
    assert controller.metrics.stage_state.labels(run=run_id, stage="rm", state="skipped")._value.get() == 1
    assert len(events(apiserver, "RunFailed")) == 1  # recorded once, however many passes ran


def test_complete_job_without_manifest_is_waited_for(apiserver, batch, store, start_controller):
    run_id = "nomani"
    create_run(batch, run_id, CHAIN)
    start_controller(run_id=run_id)
    prepare, sft = job_name(run_id, "prepare"), job_name(run_id, "sft")
    wait_until(lambda: started(apiserver, prepare), what="prepare to start")
    set_job_running(batch, NAMESPACE, prepare)
    set_job_complete(batch, NAMESPACE, prepare)  # Complete, but nothing published
    wait_until(lambda: events(apiserver, "StageWaiting"), what="StageWaiting event")
    time.sleep(1.0)  # several manifest polls
    assert not job_exists(apiserver, sft)
    assert len(events(apiserver, "StageWaiting")) == 1
    publish_step(store, run_id, "prepare")  # no Job event follows: the controller must poll the store
    wait_until(lambda: started(apiserver, sft), what="sft to start once the manifest exists")
    assert len(creates(apiserver, sft)) == 1


def test_watch_expiry_410_relists_and_the_chain_continues(apiserver, batch, store, start_controller):
    run_id = "gone"
    create_run(batch, run_id, CHAIN)
    controller = start_controller(run_id=run_id, resync_s=600)  # only the watch can trigger in time
    wait_until(lambda: apiserver.requests_where(verb="watch", resource="jobs"), what="a watch")
    wait_until(lambda: started(apiserver, job_name(run_id, "prepare")), what="prepare to start")

    def unavailable(request):
        return HookResult(503, "ServiceUnavailable", "apiserver restarting") if request.verb == "watch" else None

    # The watch breaks while the server is down; meanwhile the history the controller would resume
    # from is compacted away, so its resume is answered with 410 Gone.
    apiserver.add_hook("before", unavailable)
    apiserver.expire_watches()
    batch.patch_namespaced_job(job_name(run_id, "prepare"), NAMESPACE,
                               {"metadata": {"labels": {"touched": "yes"}}})
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
    twin["metadata"]["name"] = "rm-twin"  # a Job claiming stage rm besides the one the controller would create
    batch.create_namespaced_job(NAMESPACE, twin)
    batch.create_namespaced_job(NAMESPACE, stage_job(run_id, "rm", 2, ("sft",), suspend=True))
    start_controller(run_id=run_id)
    wait_until(lambda: started(apiserver, job_name(run_id, "prepare")), what="prepare to start")
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
    wait_until(lambda: started(apiserver, job_name(run_id, "prepare")), what="prepare to start despite API errors")
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
        wait_until(lambda: started(apiserver, job_name(run_id, "prepare")), what="prepare to start")
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

KILL_POINTS = ("before-create", "after-create", "after-event")


@pytest.mark.slow
def test_controller_killed_at_every_transition_under_kueue_runs_each_stage_once(apiserver, batch, store, tmp_path):
    run_id = "restart"
    create_run(batch, run_id, queue=QUEUE)
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
    config = tmp_path / "run.yaml"
    config.write_text(f"run_id: {run_id}\nstore:\n  kind: local\n  local:\n    path: {store.root}\n")
    log = (tmp_path / "controller.log").open("ab")
    stage_of = {job_name(run_id, s.name): s.name for s in STEPS}
    # every stage the controller creates is killed once, cycling through the moments of a transition
    plan = {s.name: KILL_POINTS[i % len(KILL_POINTS)] for i, s in enumerate(STEPS)}
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
        if request.verb == "create" and request.resource == "jobs" and request.field_manager == FIELD_MANAGER \
                and point in ("before-create", "after-create"):
            stage = stage_of.get((request.body or {}).get("metadata", {}).get("name"))
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
        if kill_if_planned(request, "before-create"):
            return HookResult(503, "ServiceUnavailable", "the client died before this write")
        return None

    def after(request):
        kill_if_planned(request, "after-create") or kill_if_planned(request, "after-event")

    apiserver.add_hook("before", before)
    apiserver.add_hook("after", after)

    def alive_and(predicate):
        def check():
            with lock:
                if state["proc"].poll() is not None:
                    start()  # the Deployment's restart, at once
            return predicate()
        return check

    kueue = FakeKueue(apiserver, NAMESPACE, max_jobs=1, queues=(QUEUE,)).start()
    start()
    try:
        order = run_to_completion(apiserver, batch, store, run_id, ready=alive_and)
        wait_until(alive_and(lambda: len(events(apiserver, "RunSucceeded")) == 1), timeout=60, what="RunSucceeded")
    finally:
        kueue.stop()
        state["proc"].terminate()
        try:
            assert state["proc"].wait(timeout=10) == 0, "controller did not exit cleanly on SIGTERM"
        finally:
            log.close()

    assert sorted(killed) == sorted(plan.items())
    assert state["starts"] == len(plan) + 1
    assert sorted(order) == sorted(s.name for s in STEPS)
    for step in STEPS:
        assert len(creates(apiserver, job_name(run_id, step.name))) == 1, step.name
        assert kueue.did("admitted").count(job_name(run_id, step.name)) == 1, step.name
    assert controller_spec_writes(apiserver) == []
    started_events = sorted(e["involvedObject"]["name"] for e in events(apiserver, "StageStarted"))
    assert started_events == sorted(job_name(run_id, s.name) for s in STEPS)
    assert len(events(apiserver, "RunSucceeded")) == 1
    assert not kueue.errors


def test_controller_cli_once_and_bad_input(apiserver, batch, store, tmp_path, capsys, monkeypatch):
    from text2sql_core.cli import main

    run_id = "cli"
    create_run(batch, run_id, CHAIN)
    publish_step(store, run_id, "prepare")  # published by an earlier install: its Job is not needed
    config = tmp_path / "run.yaml"
    config.write_text(f"run_id: {run_id}\nstore:\n  kind: local\n  local:\n    path: {store.root}\n")
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
    common = ["--config", str(config), "--kubeconfig", str(kubeconfig)]
    assert main(["controller", "--namespace", NAMESPACE, "--run-id", run_id, *common, "--once"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"run {run_id}: running") and "prepare" in out
    assert started(apiserver, job_name(run_id, "sft"))
    assert not job_exists(apiserver, job_name(run_id, "prepare"))

    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert main(["controller", "--run-id", run_id, *common]) == 2
    assert "--namespace" in capsys.readouterr().err
    assert main(["controller", "--namespace", NAMESPACE, "--run-id", "Not_A_Label", *common]) == 2
    assert "--run-id" in capsys.readouterr().err
    monkeypatch.setenv("T2S_METRICS_PORT", "eighty")
    assert main(["controller", "--namespace", NAMESPACE, "--run-id", run_id, *common]) == 2
    assert "T2S_METRICS_PORT" in capsys.readouterr().err
    assert main(["controller", "--namespace", NAMESPACE, "--config", str(tmp_path / "missing.yaml")]) == 2


def test_a_create_racing_another_is_refused_and_not_repeated(apiserver, batch, store, kube):
    from text2sql_core.k8s.controller import Controller, ControllerConfig, StoreManifests
    from text2sql_core.k8s.decide import CreateStage, plan_and_decide

    run_id = "race"
    create_run(batch, run_id, CHAIN)
    publish_step(store, run_id, "prepare")
    controller = Controller(kube, ControllerConfig(namespace=NAMESPACE, run_id=run_id), StoreManifests(store))
    _, actions = plan_and_decide(controller.observe(run_id))
    sft = job_name(run_id, "sft")
    (create,) = [a for a in actions if isinstance(a, CreateStage)]
    assert create.job == sft
    # a second controller (say, during a rollout) creates the Job between our list and our create
    batch.create_namespaced_job(NAMESPACE, dict(create.body), field_manager=FIELD_MANAGER)
    assert controller.apply(run_id, actions) is True  # lost the race: reconcile again
    assert not [e for e in events(apiserver, "StageStarted") if e["involvedObject"]["name"] == sft]
    result = controller.reconcile(run_id)
    assert started(apiserver, sft) and len(creates(apiserver, sft)) == 1
    assert [e["involvedObject"]["name"] for e in events(apiserver, "StageStarted")] == [sft]
    assert result.requeue_after is None


@pytest.mark.parametrize("use_watch", [True, False], ids=["watch", "resync-only"])
def test_one_controller_for_every_run_of_the_namespace(apiserver, batch, store, start_controller, use_watch):
    runs = ("multi-a", "multi-b")
    for run_id in runs:
        create_run(batch, run_id, CHAIN)
    start_controller(run_id=None, watch=use_watch, resync_s=0.3)
    for run_id in runs:
        wait_until(lambda run_id=run_id: started(apiserver, job_name(run_id, "prepare")),
                   what=f"{run_id} prepare to start")
        finish(batch, store, run_id, "prepare")
    for run_id in runs:
        wait_until(lambda run_id=run_id: started(apiserver, job_name(run_id, "sft")), what=f"{run_id} sft to start")
    finish(batch, store, "multi-b", "sft")
    wait_until(lambda: started(apiserver, job_name("multi-b", "rm")), what="multi-b rm to start")
    assert not job_exists(apiserver, job_name("multi-a", "rm"))
    assert len(creates(apiserver)) == 5


def test_works_without_permission_to_list_events(apiserver, batch, store, start_controller):
    run_id = "norbac"
    create_run(batch, run_id, CHAIN)
    apiserver.add_hook("before", lambda r: HookResult(403, "Forbidden", "events is forbidden")
                       if r.verb == "list" and r.resource == "events" else None)
    start_controller(run_id=run_id)
    wait_until(lambda: started(apiserver, job_name(run_id, "prepare")), what="prepare to start")
    finish(batch, store, run_id, "prepare")
    wait_until(lambda: started(apiserver, job_name(run_id, "sft")), what="sft to start without listing Events")
    time.sleep(0.5)  # further passes: the annotations keep Events from repeating
    assert len([e for e in events(apiserver, "StageStarted")
                if e["involvedObject"]["name"] == job_name(run_id, "sft")]) == 1


# ---- under Kueue: the queue owns spec.suspend --------------------------------------------------


def run_to_completion(apiserver, batch, store, run_id: str, *, steps=STEPS, ready=lambda check: check,
                      timeout: float = 60.0, already: tuple[str, ...] = ()) -> list[str]:
    """Play every stage the queue admits: running, published, Complete; returns the steps in the order
    they ran. Checks on the way that no two stages run at once (quota 1) and that a stage runs only
    once its inputs are Complete."""
    by_job = {job_name(run_id, s.name): s for s in steps}
    done: list[str] = []
    while len(done) < len(steps):
        def admitted_one():
            running = [n for n in by_job if by_job[n].name not in done and started(apiserver, n)]
            assert len(running) <= 1, f"quota 1, yet {running} run at once"
            return running
        (name,) = wait_until(ready(admitted_one), timeout=timeout, what=f"a stage to be admitted after {done}")
        step = by_job[name]
        assert set(step.inputs) <= {*done, *already}, f"{step.name} runs before its inputs {step.inputs}"
        finish(batch, store, run_id, step.name)
        done.append(step.name)
    return done


@pytest.mark.parametrize("labelled", [True, False], ids=["queue-label", "manage-jobs-without-queue-name"])
def test_whole_run_under_kueue_quota_1(apiserver, batch, store, start_controller, labelled):
    """Kueue at quota 1 admits one Job at a time; the controller only creates Jobs, never unsuspends one.
    Without the label (kueue.enabled false in the chart) a cluster whose Kueue manages every Job holds
    them all the same, and the run completes the same way."""
    run_id = "kq"
    kueue = FakeKueue(apiserver, NAMESPACE, max_jobs=1, queues=(QUEUE,), manage_jobs_without_queue_name=not labelled,
                      default_queue=None if labelled else QUEUE).start()
    try:
        create_run(batch, run_id, queue=QUEUE if labelled else None)
        controller = start_controller(run_id=run_id)
        order = run_to_completion(apiserver, batch, store, run_id)
        wait_until(lambda: events(apiserver, "RunSucceeded"), what="RunSucceeded")
    finally:
        kueue.stop()
    assert not kueue.errors
    for step in STEPS:
        name = job_name(run_id, step.name)
        assert len(creates(apiserver, name)) == 1
        assert kueue.did("admitted").count(name) == 1  # admitted once: never preempted, never started twice
    assert kueue.did("resuspended") == []  # nobody unsuspended a Job Kueue held
    assert controller_spec_writes(apiserver) == []
    assert order[0] == "prepare" and order[-1] == STEPS[-1].name
    unsuspends = [r for r in apiserver.requests_where(verb="patch", resource="jobs", status=200)
                  if ((r.body or {}).get("spec") or {}).get("suspend") is False]
    assert {r.field_manager for r in unsuspends} == {"kueue"} and len(unsuspends) == len(STEPS)
    assert not events(apiserver, "StageFailed") and not events(apiserver, "StagePreempted")
    wait_until(lambda: controller.metrics.stage_state.labels(run=run_id, stage="sft", state="published")._value.get()
               == 1, what="t2s_stage_state published")


def test_preemption_is_shown_counted_and_resumed_never_failed(apiserver, batch, store, start_controller):
    from text2sql_core.k8s.status import collect_status, format_status

    run_id = "preempt"
    kueue = FakeKueue(apiserver, NAMESPACE, max_jobs=1, queues=(QUEUE,)).start()
    try:
        create_run(batch, run_id, CHAIN, queue=QUEUE)
        controller = start_controller(run_id=run_id)
        wait_until(lambda: started(apiserver, job_name(run_id, "prepare")), what="prepare admitted")
        finish(batch, store, run_id, "prepare")
        sft = job_name(run_id, "sft")
        wait_until(lambda: started(apiserver, sft), what="sft admitted")
        set_job_running(batch, NAMESPACE, sft)
        wait_until(lambda: job(apiserver, sft)["metadata"]["annotations"].get(STAGE_STATE_ANNOTATION) == "running",
                   what="sft recorded running")
        store.put_bytes(f"runs/{run_id}/sft/_checkpoints/00000002/_manifest.json", b"{}")  # its newest checkpoint
        kueue.preempt(sft, hold_s=30)  # a higher-priority workload takes the quota
        batch.patch_namespaced_job_status(sft, NAMESPACE, {"status": {"active": 0, "ready": 0}})  # pods deleted
        wait_until(lambda: job(apiserver, sft)["metadata"]["annotations"].get(STAGE_STATE_ANNOTATION) == "preempted",
                   what="sft recorded preempted")
        (ev,) = events(apiserver, "StagePreempted")
        assert "preemption 1" in ev["message"] and ev["type"] == "Normal"
        assert job(apiserver, sft)["metadata"]["annotations"][PREEMPTIONS_ANNOTATION] == "1"
        wait_until(lambda: controller.metrics.stage_state.labels(run=run_id, stage="sft",
                                                                 state="preempted")._value.get() == 1,
                   what="t2s_stage_state preempted")
        # what `t2s status` prints (the CLI itself is tested in test_status.py)
        out = format_status(collect_status(run_id, store, steps=[s.name for s in CHAIN],
                                           jobs=apiserver.objects("jobs", NAMESPACE, group="batch")))
        assert out.splitlines()[0].startswith(f"run {run_id}: running")
        sft_row = next(line for line in out.splitlines() if line.startswith("sft "))
        assert "preempted" in sft_row and "resumes from step 2" in sft_row

        kueue.workloads[job(apiserver, sft)["metadata"]["uid"]].held_until = 0  # the quota is free again
        wait_until(lambda: started(apiserver, sft), what="sft admitted again")
        set_job_running(batch, NAMESPACE, sft)
        wait_until(lambda: events(apiserver, "StageResumed"), what="StageResumed")
        finish(batch, store, run_id, "sft")
        rm = job_name(run_id, "rm")
        wait_until(lambda: started(apiserver, rm), what="rm admitted")
        finish(batch, store, run_id, "rm")
        wait_until(lambda: events(apiserver, "RunSucceeded"), what="RunSucceeded")
    finally:
        kueue.stop()
    assert not events(apiserver, "StageFailed") and not events(apiserver, "RunFailed")
    assert len(creates(apiserver, sft)) == 1 and kueue.did("admitted").count(sft) == 2
    assert controller_spec_writes(apiserver) == []
    assert controller.metrics.transitions.labels(run=run_id, stage="sft", to="preempted")._value.get() == 1


def test_a_job_unsuspended_without_admission_is_resuspended_and_not_fought(apiserver, batch, store,
                                                                          start_controller):
    run_id = "fight"
    steps = (Step("prepare", "prepare"), Step("audit", "prepare"), Step("sft", "sft", ("prepare", "audit")))
    kueue = FakeKueue(apiserver, NAMESPACE, max_jobs=1, queues=(QUEUE,)).start()
    try:
        create_run(batch, run_id, steps, queue=QUEUE)
        start_controller(run_id=run_id)
        names = {job_name(run_id, "prepare"): "prepare", job_name(run_id, "audit"): "audit"}
        wait_until(lambda: all(job_exists(apiserver, n) for n in names) and any(started(apiserver, n) for n in names),
                   what="one root stage admitted")
        first = next(n for n in names if started(apiserver, n))
        (queued,) = set(names) - {first}
        assert job(apiserver, queued)["spec"]["suspend"] is True  # quota 1: the other root waits
        wait_until(lambda: [e for e in events(apiserver, "StageQueued") if e["involvedObject"]["name"] == queued],
                   what="the waiting Job shown as queued")
        set_job_running(batch, NAMESPACE, first)
        # a person (or another chaining tool) unsuspends the queued Job by hand
        batch.patch_namespaced_job(queued, NAMESPACE, {"spec": {"suspend": False}},
                                   _content_type="application/merge-patch+json")
        wait_until(lambda: kueue.did("resuspended") == [queued], what="Kueue to suspend it again")
        time.sleep(1.0)  # many controller passes later
        assert job(apiserver, queued)["spec"]["suspend"] is True
        patches = [r for r in apiserver.requests_where(verb="patch", resource="jobs", name=queued)
                   if r.field_manager == FIELD_MANAGER]
        # annotations only, one per state it went through (created, queued, [running, preempted]): no back-and-forth
        recorded = [r.body["metadata"]["annotations"][STAGE_STATE_ANNOTATION] for r in patches]
        assert all(set(r.body) == {"metadata"} for r in patches)
        assert len(recorded) <= 4 and len(set(recorded)) == len(recorded), recorded
        assert controller_spec_writes(apiserver) == []
        finish(batch, store, run_id, names[first])
        run_to_completion(apiserver, batch, store, run_id, steps=[s for s in steps if s.name != names[first]],
                          already=(names[first],))
        wait_until(lambda: events(apiserver, "RunSucceeded"), what="RunSucceeded")
    finally:
        kueue.stop()
    assert kueue.did("resuspended") == [queued]
    assert not events(apiserver, "StageFailed")
