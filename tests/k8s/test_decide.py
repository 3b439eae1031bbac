"""``decide(observed) -> actions``: a table of observed states and the actions they must produce."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from text2sql_core.k8s.decide import (
    COMPONENT_LABEL,
    DEPENDS_ON_ANNOTATION,
    FAILED_STAGE_ANNOTATION,
    ORDER_ANNOTATION,
    PREEMPTIONS_ANNOTATION,
    RUN_LABEL,
    RUN_STATE_ANNOTATION,
    STAGE_LABEL,
    STAGE_STATE_ANNOTATION,
    AnnotateJob,
    CreateStage,
    JobView,
    Observed,
    PodView,
    RecordEvent,
    RunState,
    SpecSource,
    StageSpec,
    StageState,
    decide,
    job_view,
    plan,
    pod_view,
    spec_source,
    started_message,
)

RUN = "r1"
# prepare -> sft -> {predict, rm}; ppo needs sft and rm
GRAPH = {"prepare": (), "sft": ("prepare",), "predict": ("sft",), "rm": ("sft",), "ppo": ("sft", "rm")}
ORDER = {name: i for i, name in enumerate(GRAPH)}


_NATURAL = {"suspended": "queued", "unsuspended": "running", "running": "running", "complete": "published",
            "failed": "failed"}


def J(stage: str, status: str = "suspended", *, run: str = RUN, labels: dict | None = None,
      annotations: dict | None = None, name: str | None = None, recorded: str | None = None,
      failed_stage: str | None = None, shown: str | None = None, preemptions: int | None = None) -> JobView:
    """A stage Job; status: suspended | unsuspended (no pod yet) | running | complete | failed.

    ``recorded`` / ``failed_stage`` / ``shown`` / ``preemptions`` are the run-state, failed-stage,
    stage-state and preemptions annotations a controller wrote earlier.
    """
    lab = {RUN_LABEL: run, STAGE_LABEL: stage, COMPONENT_LABEL: "stage"}
    lab.update(labels or {})
    ann = {ORDER_ANNOTATION: str(ORDER.get(stage, 9)), DEPENDS_ON_ANNOTATION: ",".join(GRAPH.get(stage, ())),
           RUN_STATE_ANNOTATION: recorded, FAILED_STAGE_ANNOTATION: failed_stage, STAGE_STATE_ANNOTATION: shown,
           PREEMPTIONS_ANNOTATION: None if preemptions is None else str(preemptions)}
    ann.update(annotations or {})
    ann = {k: v for k, v in ann.items() if v is not None}
    return JobView(name=name or f"job-{stage}", uid=f"uid-{stage}", resource_version="7", labels=lab,
                   annotations=ann, suspended=status == "suspended", active=int(status == "running"),
                   complete=status == "complete", failed=status == "failed",
                   failure="BackoffLimitExceeded: boom" if status == "failed" else "")


def spec_job(stage: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": f"job-{stage}", "namespace": "ml",
                         "labels": {RUN_LABEL: RUN, STAGE_LABEL: stage, COMPONENT_LABEL: "stage"},
                         "annotations": {ORDER_ANNOTATION: str(ORDER[stage]),
                                         DEPENDS_ON_ANNOTATION: ",".join(GRAPH[stage])}},
            "spec": {"suspend": True, "template": {"spec": {"containers": [{"name": "stage"}]}}}}


def source(*skip: str, problems: tuple[str, ...] = ()) -> SpecSource:
    """The run's spec ConfigMap (every step of GRAPH but ``skip``)."""
    return SpecSource("t2s-r1-stages", "uid-specs",
                      tuple(StageSpec(s, ORDER[s], GRAPH[s], spec_job(s)) for s in GRAPH if s not in skip), problems)


def steady(*jobs: JobView, state: str = "running") -> tuple[JobView, ...]:
    """The Jobs with the run state recorded, and a stage state (unless given) matching their status
    (a Complete Job as published): rows then show only what this pass changes."""
    out = []
    for j in jobs:
        status = ("failed" if j.failed else "complete" if j.complete else "suspended" if j.suspended
                  else "running")
        ann = {RUN_STATE_ANNOTATION: state, STAGE_STATE_ANNOTATION: _NATURAL[status], **j.annotations}
        out.append(JobView(**{**j.__dict__, "annotations": ann}))
    return tuple(out)


def summary(actions) -> list[str]:
    out = []
    for a in actions:
        if isinstance(a, CreateStage):
            out.append(f"create {a.stage}")
        elif isinstance(a, RecordEvent):
            out.append(f"event {a.reason} {a.job}")
        elif isinstance(a, AnnotateJob):
            ann = dict(a.annotations)
            failed = f":{ann[FAILED_STAGE_ANNOTATION]}" if ann.get(FAILED_STAGE_ANNOTATION) else ""
            count = f" {ann[PREEMPTIONS_ANNOTATION]}" if PREEMPTIONS_ANNOTATION in ann else ""
            out.append(f"annotate {a.job} {ann[RUN_STATE_ANNOTATION]}{failed} {ann[STAGE_STATE_ANNOTATION]}{count}")
    return out


SFT_STARTED = ("StageStarted", started_message("sft", "job-sft"))
DONE = ("prepare", "sft")

CASES = [
    pytest.param(
        (), set(), set(), source(),
        ["create prepare", "event StageStarted job-prepare", "annotate job-prepare running created"],
        id="fresh run: create the first Job from its spec"),
    pytest.param(
        steady(J("prepare", shown="created")), set(), set(), source(),
        ["event StageQueued job-prepare", "annotate job-prepare running queued"],
        id="created, then held by its queue: waiting for admission"),
    pytest.param(
        steady(J("prepare", "running", shown="created")), set(), set(), source(),
        ["annotate job-prepare running running"],
        id="created and running at once (no queue)"),
    pytest.param(
        steady(J("prepare")), set(), set(), source(),
        [],
        id="still queued: nothing to do, never unsuspended by the controller"),
    pytest.param(
        steady(J("prepare", "complete")), {"prepare"}, set(), source(),
        ["create sft", "event StageStarted job-sft", "annotate job-sft running created"],
        id="upstream Complete and published: create the next Job"),
    pytest.param(
        steady(J("prepare", "complete", shown="running")), set(), set(), source(),
        ["event StageWaiting job-prepare", "annotate job-prepare running complete"],
        id="Complete without manifest: wait, do not trust the Job"),
    pytest.param(
        steady(J("prepare", "complete", shown="complete")), set(), set(), source(), [],
        id="still waiting for the manifest: the wait was already recorded"),
    pytest.param(
        steady(J("prepare", "running")), {"prepare"}, set(), source(), [],
        id="manifest published but its Job still running: wait for the Job too"),
    pytest.param(
        (*steady(J("prepare", "complete")), J("sft", "unsuspended", recorded="running")),
        {"prepare"}, set(), source(),
        ["event StageStarted job-sft", "annotate job-sft running running"],
        id="restarted after the create, before its Event: record Event and annotation, no second create"),
    pytest.param(
        (*steady(J("prepare", "complete")), J("sft", "unsuspended", recorded="running")),
        {"prepare"}, {SFT_STARTED}, source(),
        ["annotate job-sft running running"],
        id="restarted after the Event, before the annotation: annotation only"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft", "complete")), set(DONE), set(), source(),
        ["create predict", "create rm", "event StageStarted job-predict", "event StageStarted job-rm",
         "annotate job-predict running created", "annotate job-rm running created"],
        id="fan-out: both downstream Jobs are created in one pass"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft", "complete"), J("predict", "running"), J("rm", "running")),
        set(DONE), set(), source(), [],
        id="fan-in: ppo waits while one of its inputs still runs"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft", shown="running")), {"prepare"}, set(), source(),
        ["event StagePreempted job-sft", "annotate job-sft running preempted 1"],
        id="suspended after it ran: preempted (counted), not failed"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft", shown="preempted", preemptions=1)), {"prepare"}, set(), source(),
        [],
        id="still preempted: waits for re-admission"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft", "running", shown="preempted", preemptions=1)), {"prepare"}, set(),
        source(),
        ["event StageResumed job-sft", "annotate job-sft running running 1"],
        id="re-admitted: resumed"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft", shown="running", preemptions=1)), {"prepare"}, set(), source(),
        ["event StagePreempted job-sft", "annotate job-sft running preempted 2"],
        id="a second preemption is a new Event"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft", "complete"), J("predict", "failed", shown="running"),
               J("rm", "complete")), {"prepare", "sft", "rm"}, set(), source(),
        ["event StageFailed job-predict", "event RunFailed job-prepare",
         "annotate job-prepare failed:predict published", "annotate job-sft failed:predict published",
         "annotate job-predict failed:predict failed", "annotate job-rm failed:predict published"],
        id="a failed stage fails the run; ppo, though ready, is not created"),
    pytest.param(
        (J("prepare", "complete", recorded="failed", failed_stage="predict", shown="published"),
         J("sft", "complete", recorded="failed", failed_stage="predict", shown="published"),
         J("rm", "complete", recorded="failed", failed_stage="predict", shown="published")),
        {"prepare", "sft", "rm"}, set(), source(),
        [],
        id="recorded failure outlives the failed Job (deleted by TTL): it is not created again"),
    pytest.param(
        steady(*(J(s, "complete") for s in GRAPH)), set(GRAPH), set(), source(),
        ["event RunSucceeded job-prepare", *(f"annotate job-{s} succeeded published" for s in GRAPH)],
        id="every stage Complete and published: run succeeded"),
    pytest.param(
        steady(*(J(s, "complete") for s in GRAPH), state="succeeded"), set(GRAPH), set(), source(),
        [],
        id="succeeded and recorded: nothing more, even after the Event expired"),
    pytest.param(
        (), {"prepare"}, set(), source("prepare"),
        ["create sft", "event StageStarted job-sft", "annotate job-sft running created"],
        id="upstream without a spec (disabled in the chart) counts once published"),
    pytest.param(
        (), set(), set(), source("prepare"),
        ["event StageWaiting job-sft"],
        id="upstream without a spec and unpublished: wait and say why"),
    pytest.param(
        (), {"prepare"}, set(), source(),
        ["create sft", "event StageStarted job-sft", "annotate job-sft running created"],
        id="published step whose Job is gone (TTL): not created again"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft", name="job-debug", labels={COMPONENT_LABEL: "debug"})),
        {"prepare"}, set(), source(),
        ["create sft", "event JobConflict job-debug", "event StageStarted job-sft", "annotate job-sft running created"],
        id="a Job of the run with another component label: Warning only"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft"), J("sft", name="job-sft-2")), {"prepare"}, set(), source(),
        ["event JobConflict job-sft", "event JobConflict job-sft-2", "event StageWaiting job-predict",
         "event StageWaiting job-rm", "event StageWaiting job-ppo"],
        id="two Jobs claim one stage: neither is touched, nothing is created for it, downstream waits"),
    pytest.param(
        steady(J("prepare", "running"), J("sft", annotations={ORDER_ANNOTATION: "first"})), set(), set(), None,
        ["event JobConflict job-sft"],
        id="unparseable order annotation: foreign"),
    pytest.param(
        steady(J("prepare", "running"), J("sft", annotations={DEPENDS_ON_ANNOTATION: None})), set(), set(), None,
        ["event JobConflict job-sft"],
        id="missing depends-on annotation: foreign"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft", run="other", name="job-other-sft")), {"prepare"}, set(), source(),
        ["create sft", "event StageStarted job-sft", "annotate job-sft running created"],
        id="another run's Job is ignored entirely"),
    pytest.param(
        steady(J("prepare", "running")), set(), set(), source(problems=("data.sft.yaml is not a batch/v1 Job",)),
        ["event SpecInvalid t2s-r1-stages"],
        id="an unusable spec: Warning on the ConfigMap"),
    pytest.param(
        (), set(), set(), None, [],
        id="no Jobs, no specs: nothing to do"),
]


@pytest.mark.parametrize(("jobs", "published", "events", "specs", "expected"), CASES)
def test_decide_table(jobs, published, events, specs, expected):
    actions = decide(Observed(RUN, tuple(jobs), frozenset(published), frozenset(events), specs))
    got = summary(actions)
    assert sorted(got) == sorted(expected)
    # creates come first: they are what the next stage is waiting for
    kinds = [isinstance(a, CreateStage) for a in actions]
    assert kinds == sorted(kinds, reverse=True)
    assert not any(isinstance(a, AnnotateJob) and "spec" in dict(a.annotations) for a in actions)


def test_decide_is_idempotent_once_its_actions_are_reflected():
    """Applying the actions and observing again yields no new action (the level-triggered fixpoint)."""
    jobs = [J("prepare", "complete", shown="published", recorded="running")]
    published = frozenset({"prepare"})
    events: set[tuple[str, str]] = set()
    for _ in range(3):
        actions = decide(Observed(RUN, tuple(jobs), published, frozenset(events), source()))
        for a in actions:
            if isinstance(a, CreateStage):
                jobs.append(job_view({**a.body, "spec": {**a.body["spec"], "suspend": False}}))
            elif isinstance(a, RecordEvent):
                events.add(a.key)
            elif isinstance(a, AnnotateJob):
                jobs = [JobView(**{**j.__dict__, "annotations": {**j.annotations, **dict(a.annotations)}})
                        if j.name == a.job else j for j in jobs]
    assert decide(Observed(RUN, tuple(jobs), published, frozenset(events), source())) == []
    assert [j.name for j in jobs] == ["job-prepare", "job-sft"]


def test_created_job_is_the_spec_owned_by_the_spec_configmap():
    (create,) = [a for a in decide(Observed(RUN, (), frozenset(), frozenset(), source())) if isinstance(a, CreateStage)]
    assert create.job == "job-prepare"
    meta = create.body["metadata"]
    assert meta["ownerReferences"] == [{"apiVersion": "v1", "kind": "ConfigMap", "name": "t2s-r1-stages",
                                        "uid": "uid-specs"}]
    assert "namespace" not in meta  # the controller's namespace
    assert create.body["spec"] == spec_job("prepare")["spec"]  # suspend as rendered: the queue's field


def test_created_job_carries_quantities_as_strings():
    """The chart renders `nvidia.com/gpu: 1`; the typed client only sends string quantities."""
    job = spec_job("prepare")
    pod = job["spec"]["template"]["spec"]
    pod["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 2, "memory": "16Gi"}, "requests": {"cpu": 8}}
    pod["volumes"] = [{"name": "work", "emptyDir": {"sizeLimit": 1000}}]
    src = SpecSource("specs", "u", (StageSpec("prepare", 0, (), job),))
    (create,) = [a for a in decide(Observed(RUN, (), frozenset(), frozenset(), src)) if isinstance(a, CreateStage)]
    created = create.body["spec"]["template"]["spec"]
    assert created["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "2", "memory": "16Gi"},
                                                     "requests": {"cpu": "8"}}
    assert created["volumes"] == [{"name": "work", "emptyDir": {"sizeLimit": "1000"}}]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2  # the spec itself is not changed


def test_spec_source_parses_the_configmap_and_reports_what_it_cannot_use():
    import yaml

    good = yaml.safe_dump(spec_job("sft"))
    other_run = spec_job("rm")
    other_run["metadata"]["labels"][RUN_LABEL] = "r2"
    cm = {"metadata": {"name": "specs", "uid": "u1"},
          "data": {"sft.yaml": good, "rm.yaml": yaml.safe_dump(other_run), "ppo.yaml": "kind: Pod\n",
                   "predict.yaml": good, "broken.yaml": "{: ["}}
    src = spec_source(cm, RUN)
    assert (src.name, src.uid) == ("specs", "u1")
    assert [(s.step, s.order, s.depends_on) for s in src.specs] == [("sft", 1, ("prepare",))]
    problems = " | ".join(src.problems)
    assert "data.rm.yaml" in problems and "'r2'" in problems
    assert "data.ppo.yaml is not a batch/v1 Job" in problems
    assert "data.predict.yaml" in problems and "does not match the key" in problems
    assert "data.broken.yaml is not YAML" in problems


def test_plan_states_and_skipped_stages():
    p = plan(Observed(RUN, steady(J("prepare", "complete"), J("sft", "failed"), J("predict"), J("rm")),
                      frozenset({"prepare"}), source=source()))
    assert p.state is RunState.FAILED and p.failed_stage == "sft"
    assert {s.stage: s.state for s in p.stages} == {"prepare": StageState.PUBLISHED, "sft": StageState.FAILED,
                                                    "predict": StageState.SKIPPED, "rm": StageState.SKIPPED,
                                                    "ppo": StageState.SKIPPED}
    assert p.stage("ppo").job is None and p.stage("ppo").job_name == "job-ppo"
    assert not p.waits_on_store


def test_plan_waits_on_store_only_for_manifests():
    waiting = plan(Observed(RUN, steady(J("prepare", "complete"), J("sft")), frozenset()))
    assert waiting.waits_on_store and waiting.stage("prepare").state is StageState.COMPLETE
    running = plan(Observed(RUN, steady(J("prepare", "running"), J("sft")), frozenset()))
    assert not running.waits_on_store


def test_job_view_reads_the_api_json():
    obj = {
        "metadata": {"name": "j", "uid": "u", "resourceVersion": "42", "labels": {RUN_LABEL: RUN},
                     "annotations": {ORDER_ANNOTATION: "1"}},
        "spec": {"suspend": False},
        "status": {"startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:01:30Z", "succeeded": 1,
                   "conditions": [{"type": "SuccessCriteriaMet", "status": "True"},
                                  {"type": "Complete", "status": "True"},
                                  {"type": "Failed", "status": "False", "reason": "x"}]},
    }
    view = job_view(obj)
    assert (view.name, view.uid, view.resource_version, view.suspended) == ("j", "u", "42", False)
    assert view.complete and not view.failed
    assert view.start_time == datetime(2026, 1, 1, tzinfo=UTC)
    failed = job_view({"metadata": {"name": "f"}, "spec": {"suspend": True},
                       "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                                  "message": "too slow"}]}})
    assert failed.failed and failed.failure == "DeadlineExceeded: too slow" and failed.suspended


def P(name: str, phase: str = "Running", *, job: str = "job-sft", index: str = "", disruption: str = "") -> PodView:
    """A pod of a stage Job; ``disruption`` is the DisruptionTarget "reason: message" Kubernetes set."""
    return PodView(name, job, phase, index, disruption)


EVICTED = "EvictionByEvictionAPI: Eviction API: evicting"
RUNNING_SFT = (J("prepare", "complete"), J("sft", "running"))
PREEMPTED_SFT = (J("prepare", "complete"), J("sft", "running", shown="preempted", preemptions=1))

DISRUPTION_CASES = [
    pytest.param(
        steady(*RUNNING_SFT), (P("sft-a", "Failed", disruption=EVICTED),),
        ["event StagePreempted job-sft", "annotate job-sft running preempted 1"],
        id="its pod evicted: preempted (counted), not failed, not running"),
    pytest.param(
        steady(*RUNNING_SFT), (P("sft-a", "Running", disruption=EVICTED),),
        ["event StagePreempted job-sft", "annotate job-sft running preempted 1"],
        id="its pod marked for eviction, still terminating: preempted already"),
    pytest.param(
        steady(*PREEMPTED_SFT), (P("sft-a", "Failed", disruption=EVICTED), P("sft-b", "Pending")),
        [],
        id="the replacement pod is pending: still preempted"),
    pytest.param(
        steady(*PREEMPTED_SFT), (P("sft-b", "Pending"),),
        [],
        id="the evicted pod was deleted, its replacement does not run yet: still preempted"),
    pytest.param(
        steady(*PREEMPTED_SFT), (P("sft-a", "Failed", disruption=EVICTED), P("sft-b", "Running")),
        ["event StageResumed job-sft", "annotate job-sft running running 1"],
        id="the replacement pod runs: resumed"),
    pytest.param(
        steady(*RUNNING_SFT), (P("sft-a", "Failed", disruption="Evicted: The node was low on memory."),),
        ["event StagePreempted job-sft", "annotate job-sft running preempted 1"],
        id="an older kubelet's eviction (phase Failed, reason Evicted): preempted"),
    pytest.param(
        steady(*RUNNING_SFT), (P("sft-0-a", index="0"), P("sft-1-a", "Failed", index="1",
                                                          disruption="PreemptionByScheduler: preempted")),
        ["event StagePreempted job-sft", "annotate job-sft running preempted 1"],
        id="one index of an Indexed Job disrupted: preempted though the other index runs"),
    pytest.param(
        steady(*RUNNING_SFT), (P("sft-a", "Failed"), P("sft-b", "Pending")),
        [],
        id="a pod that failed on its own (retried by backoffLimit): still running"),
    pytest.param(
        steady(*RUNNING_SFT), (P("other-a", "Failed", job="job-rm", disruption=EVICTED),),
        [],
        id="another Job's pod disrupted: this stage runs"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft", "failed", shown="running")), (P("sft-a", "Failed", disruption=EVICTED),),
        ["event StageFailed job-sft", "event RunFailed job-prepare", "annotate job-prepare failed:sft published",
         "annotate job-sft failed:sft failed"],
        id="a Job failed (its policy did not ignore the disruption): failed"),
]


@pytest.mark.parametrize(("jobs", "pods", "expected"), DISRUPTION_CASES)
def test_decide_disruptions(jobs, pods, expected):
    actions = decide(Observed(RUN, tuple(jobs), frozenset({"prepare"}), frozenset(), source(), pods))
    assert sorted(summary(actions)) == sorted(expected)


def test_a_disruption_is_named_in_the_event_and_unseen_without_pods():
    jobs = steady(*RUNNING_SFT)
    pods = (P("sft-a", "Failed", disruption=EVICTED),)
    p = plan(Observed(RUN, jobs, frozenset({"prepare"}), source=source(), pods=pods))
    assert p.stage("sft").state is StageState.PREEMPTED and p.stage("sft").disruption == f"pod sft-a: {EVICTED}"
    (ev,) = [a for a in decide(Observed(RUN, jobs, frozenset({"prepare"}), frozenset(), source(), pods))
             if isinstance(a, RecordEvent)]
    assert "pod sft-a: EvictionByEvictionAPI" in ev.message and "when a new pod runs" in ev.message
    assert ev.type == "Normal"
    # no RBAC to list pods: the disruption is not seen, the stage reads as running (as before pods were read)
    blind = plan(Observed(RUN, steady(*PREEMPTED_SFT), frozenset({"prepare"}), source=source(), pods=None))
    assert blind.stage("sft").state is StageState.RUNNING


def test_pod_view_reads_the_api_json():
    evicted = pod_view({
        "metadata": {"name": "sft-1-x", "labels": {"batch.kubernetes.io/job-name": "job-sft",
                                                   "batch.kubernetes.io/job-completion-index": "1"}},
        "status": {"phase": "Failed", "conditions": [
            {"type": "Ready", "status": "False"},
            {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
             "message": "The node had condition: [DiskPressure]."}]}})
    assert evicted == PodView("sft-1-x", "job-sft", "Failed", "1",
                              "TerminationByKubelet: The node had condition: [DiskPressure].")
    old_kubelet = pod_view({"metadata": {"name": "p", "ownerReferences": [
        {"kind": "Job", "name": "job-sft", "controller": True, "uid": "u"}]},
        "status": {"phase": "Failed", "reason": "Evicted", "message": "low on memory"}})
    assert (old_kubelet.job, old_kubelet.disruption, old_kubelet.index) == ("job-sft", "Evicted: low on memory", "")
    cleared = pod_view({"metadata": {"name": "p", "labels": {"job-name": "job-sft"}},
                        "status": {"phase": "Running", "conditions": [{"type": "DisruptionTarget", "status": "False"}]}})
    assert (cleared.job, cleared.phase, cleared.disruption) == ("job-sft", "Running", "")
