"""``decide(observed) -> actions``: a table of observed states and the actions they must produce."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from text2sql_core.k8s.decide import (
    COMPONENT_LABEL,
    DEPENDS_ON_ANNOTATION,
    FAILED_STAGE_ANNOTATION,
    ORDER_ANNOTATION,
    RUN_LABEL,
    RUN_STATE_ANNOTATION,
    STAGE_LABEL,
    STAGE_STATE_ANNOTATION,
    AnnotateJob,
    JobView,
    Observed,
    RecordEvent,
    RunState,
    StageState,
    StartStage,
    decide,
    job_view,
    plan,
    started_message,
)

RUN = "r1"
# prepare -> sft -> {predict, rm}; ppo needs sft and rm
GRAPH = {"prepare": (), "sft": ("prepare",), "predict": ("sft",), "rm": ("sft",), "ppo": ("sft", "rm")}
ORDER = {name: i for i, name in enumerate(GRAPH)}


_NATURAL = {"suspended": "pending", "unsuspended": "running", "running": "running", "complete": "published",
            "failed": "failed"}


def J(stage: str, status: str = "suspended", *, run: str = RUN, labels: dict | None = None,
      annotations: dict | None = None, name: str | None = None, recorded: str | None = None,
      failed_stage: str | None = None, shown: str | None = None) -> JobView:
    """A stage Job; status: suspended | unsuspended (no pod yet) | running | complete | failed.

    ``recorded`` / ``failed_stage`` / ``shown`` are the run-state, failed-stage and stage-state
    annotations a controller wrote earlier.
    """
    lab = {RUN_LABEL: run, STAGE_LABEL: stage, COMPONENT_LABEL: "stage"}
    lab.update(labels or {})
    ann = {ORDER_ANNOTATION: str(ORDER.get(stage, 9)), DEPENDS_ON_ANNOTATION: ",".join(GRAPH.get(stage, ())),
           RUN_STATE_ANNOTATION: recorded, FAILED_STAGE_ANNOTATION: failed_stage, STAGE_STATE_ANNOTATION: shown}
    ann.update(annotations or {})
    ann = {k: v for k, v in ann.items() if v is not None}
    return JobView(name=name or f"job-{stage}", uid=f"uid-{stage}", resource_version="7", labels=lab,
                   annotations=ann, suspended=status == "suspended", active=int(status == "running"),
                   complete=status == "complete", failed=status == "failed",
                   failure="BackoffLimitExceeded: boom" if status == "failed" else "")


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
        if isinstance(a, StartStage):
            out.append(f"start {a.stage}")
        elif isinstance(a, RecordEvent):
            out.append(f"event {a.reason} {a.job}")
        elif isinstance(a, AnnotateJob):
            ann = dict(a.annotations)
            failed = f":{ann[FAILED_STAGE_ANNOTATION]}" if ann.get(FAILED_STAGE_ANNOTATION) else ""
            out.append(f"annotate {a.job} {ann[RUN_STATE_ANNOTATION]}{failed} {ann[STAGE_STATE_ANNOTATION]}")
    return out


SFT_STARTED = ("StageStarted", started_message("sft", "job-sft"))

CASES = [
    pytest.param(
        (J("prepare", "running"), J("sft"), J("predict"), J("rm"), J("ppo")), set(), set(),
        ["event StageStarted job-prepare", "annotate job-prepare running running",
         *(f"annotate job-{s} running pending" for s in ("sft", "predict", "rm", "ppo"))],
        id="fresh run: record prepare as started, annotate every Job"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft"), J("predict"), J("rm"), J("ppo")), {"prepare"}, set(),
        ["start sft", "event StageStarted job-sft", "annotate job-sft running running"],
        id="upstream Complete and published: start the next stage"),
    pytest.param(
        steady(J("prepare", "complete", shown="running"), J("sft"), J("predict"), J("rm"), J("ppo")), set(), set(),
        ["event StageWaiting job-prepare", "annotate job-prepare running complete"],
        id="Complete without manifest: wait, do not trust the Job"),
    pytest.param(
        steady(J("prepare", "complete", shown="complete"), J("sft"), J("predict"), J("rm"), J("ppo")), set(),
        set(), [],
        id="still waiting for the manifest: the wait was already recorded"),
    pytest.param(
        steady(J("prepare", "running"), J("sft"), J("predict"), J("rm"), J("ppo")), {"prepare"}, set(),
        [],
        id="manifest published but its Job still running: wait for the Job too"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft", "unsuspended"), J("predict"), J("rm"), J("ppo")), {"prepare"},
        set(), [],
        id="already unsuspended: never started twice"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft", "unsuspended", shown="pending"), J("predict"), J("rm"), J("ppo")),
        {"prepare"}, set(),
        ["event StageStarted job-sft", "annotate job-sft running running"],
        id="restarted after the patch, before its Event: record Event and annotation, no patch"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft", "unsuspended", shown="pending"), J("predict"), J("rm"), J("ppo")),
        {"prepare"}, {SFT_STARTED},
        ["annotate job-sft running running"],
        id="restarted after the Event, before the annotation: annotation only"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft", "complete", shown="pending"), J("predict"), J("rm"), J("ppo")),
        {"prepare", "sft"}, set(),
        ["start predict", "start rm", "event StageStarted job-sft", "event StageStarted job-predict",
         "event StageStarted job-rm", "annotate job-sft running published", "annotate job-predict running running",
         "annotate job-rm running running"],
        id="fan-out: both downstream stages start in one pass (and a missed start is recorded)"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft", "complete"), J("predict", "running"), J("rm", "running"),
               J("ppo")), {"prepare", "sft"}, set(),
        [],
        id="fan-in: ppo waits while one of its inputs still runs"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft", "complete"), J("predict", "failed", shown="running"),
               J("rm", "complete"), J("ppo")), {"prepare", "sft", "rm"}, set(),
        ["event StageFailed job-predict", "event RunFailed job-prepare",
         "annotate job-prepare failed:predict published", "annotate job-sft failed:predict published",
         "annotate job-predict failed:predict failed", "annotate job-rm failed:predict published",
         "annotate job-ppo failed:predict skipped"],
        id="a failed stage fails the run; ppo, though ready, does not start"),
    pytest.param(
        (J("prepare", "complete", recorded="failed", failed_stage="predict", shown="published"),
         J("sft", "complete", recorded="failed", failed_stage="predict", shown="published"),
         J("rm", "complete", recorded="failed", failed_stage="predict", shown="published"),
         J("ppo", recorded="failed", failed_stage="predict", shown="skipped")),
        {"prepare", "sft", "rm"}, set(),
        [],
        id="recorded failure outlives the failed Job (deleted by TTL): still nothing starts"),
    pytest.param(
        steady(*(J(s, "complete") for s in GRAPH)), set(GRAPH), set(),
        ["event RunSucceeded job-prepare", *(f"annotate job-{s} succeeded published" for s in GRAPH)],
        id="every stage Complete and published: run succeeded"),
    pytest.param(
        steady(*(J(s, "complete") for s in GRAPH), state="succeeded"), set(GRAPH), set(),
        [],
        id="succeeded and recorded: nothing more, even after the Event expired"),
    pytest.param(
        steady(J("sft"), J("predict"), J("rm"), J("ppo")), {"prepare"}, set(),
        ["start sft", "event StageStarted job-sft", "annotate job-sft running running"],
        id="upstream without a Job (disabled in the chart) counts once published"),
    pytest.param(
        steady(J("sft"), J("predict"), J("rm"), J("ppo")), set(), set(),
        ["event StageWaiting job-sft"],
        id="upstream without a Job and unpublished: wait and say why"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft", "unsuspended"), J("predict", "unsuspended"), J("rm"), J("ppo")),
        {"prepare"}, set(),
        [],
        id="a Job unsuspended by someone else before its inputs: left alone"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft"), J("predict"), J("rm"), J("ppo"),
               J("sft", name="job-debug", labels={COMPONENT_LABEL: "debug"})), {"prepare"}, set(),
        ["start sft", "event JobConflict job-debug", "event StageStarted job-sft", "annotate job-sft running running"],
        id="a Job of the run with another component label: Warning only"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft"), J("sft", name="job-sft-2"), J("predict"), J("rm"), J("ppo")),
        {"prepare"}, set(),
        ["event JobConflict job-sft", "event JobConflict job-sft-2", "event StageWaiting job-predict",
         "event StageWaiting job-rm", "event StageWaiting job-ppo"],
        id="two Jobs claim one stage: neither is touched, downstream waits"),
    pytest.param(
        steady(J("prepare", "running"), J("sft", annotations={ORDER_ANNOTATION: "first"})), set(), set(),
        ["event JobConflict job-sft"],
        id="unparseable order annotation: foreign"),
    pytest.param(
        steady(J("prepare", "running"), J("sft", annotations={DEPENDS_ON_ANNOTATION: None})), set(), set(),
        ["event JobConflict job-sft"],
        id="missing depends-on annotation: foreign"),
    pytest.param(
        steady(J("prepare", "complete"), J("sft"), J("sft", run="other", name="job-other-sft")), {"prepare"}, set(),
        ["start sft", "event StageStarted job-sft", "annotate job-sft running running"],
        id="another run's Job is ignored entirely"),
    pytest.param(
        (), set(), set(), [],
        id="no Jobs: nothing to do"),
]


@pytest.mark.parametrize(("jobs", "published", "events", "expected"), CASES)
def test_decide_table(jobs, published, events, expected):
    actions = decide(Observed(RUN, tuple(jobs), frozenset(published), frozenset(events)))
    got = summary(actions)
    assert sorted(got) == sorted(expected)
    # starts come first: they are what the next stage is waiting for
    kinds = [isinstance(a, StartStage) for a in actions]
    assert kinds == sorted(kinds, reverse=True)


def test_decide_is_idempotent_once_its_actions_are_reflected():
    """Applying the actions and observing again yields no new action (the level-triggered fixpoint)."""
    jobs = [J("prepare", "complete"), J("sft"), J("predict"), J("rm"), J("ppo")]
    published = frozenset({"prepare"})
    events: set[tuple[str, str]] = set()
    for _ in range(3):
        actions = decide(Observed(RUN, tuple(jobs), published, frozenset(events)))
        for a in actions:
            if isinstance(a, StartStage):
                jobs = [JobView(**{**j.__dict__, "suspended": False}) if j.name == a.job else j for j in jobs]
            elif isinstance(a, RecordEvent):
                events.add(a.key)
            elif isinstance(a, AnnotateJob):
                jobs = [JobView(**{**j.__dict__, "annotations": {**j.annotations, **dict(a.annotations)}})
                        if j.name == a.job else j for j in jobs]
    assert decide(Observed(RUN, tuple(jobs), published, frozenset(events))) == []
    assert [j.name for j in jobs if not j.suspended] == ["job-prepare", "job-sft"]


def test_start_is_conditional_on_the_observed_resource_version():
    jobs = steady(J("prepare", "complete"), J("sft"))
    (start,) = [a for a in decide(Observed(RUN, jobs, frozenset({"prepare"}))) if isinstance(a, StartStage)]
    assert start == StartStage("job-sft", "sft", "7")


def test_plan_states_and_skipped_stages():
    p = plan(Observed(RUN, steady(J("prepare", "complete"), J("sft", "failed"), J("predict"), J("rm")),
                      frozenset({"prepare"})))
    assert p.state is RunState.FAILED and p.failed_stage == "sft"
    assert {s.stage: s.state for s in p.stages} == {"prepare": StageState.PUBLISHED, "sft": StageState.FAILED,
                                                    "predict": StageState.SKIPPED, "rm": StageState.SKIPPED}
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
