"""What the stage controller should do, as a pure function of what it observes.

The controller is level-triggered: every pass re-reads the run's Jobs, the Events it already
recorded and the set of published steps, and ``decide(observed)`` returns the actions that move
the cluster towards the desired state. Nothing is remembered between passes, so a controller
killed at any point and restarted computes the same actions from the same observations; a Job
already unsuspended is "started" and is never patched again.

Rules (``plan`` computes them, ``decide`` turns them into actions):

* A Job belongs to the run when it carries ``text2sql-rlhf.dev/run-id: <run>``. It is a *stage
  Job* when it also has ``app.kubernetes.io/component: stage``, a ``text2sql-rlhf.dev/stage``
  label, an integer ``text2sql-rlhf.dev/order`` annotation and a ``text2sql-rlhf.dev/depends-on``
  annotation (comma-separated upstream steps, empty for prepare). Any other Job of the run, and
  every Job of a stage claimed by more than one Job, is *foreign*: it gets a ``JobConflict``
  Warning Event and is never changed.
* An upstream step is satisfied when its Job is Complete **and** its manifest is published. A step
  that no Job of the run renders (disabled in the chart, or its Job deleted after its TTL) is
  satisfied by its manifest alone. A Complete Job without a manifest is waited for, never trusted.
* A suspended stage Job whose upstream steps are all satisfied is started (``spec.suspend: false``).
* A Failed Job fails the run: nothing starts any more, the run is annotated ``failed`` with the
  failed stage, and a ``RunFailed`` Event is recorded. The failure is read back from the
  annotations too, so it survives the failed Job being garbage-collected.
* The run state (``text2sql-rlhf.dev/run-state``: running/succeeded/failed, with
  ``text2sql-rlhf.dev/failed-stage``) is written as an annotation on **every** stage Job of the
  run, so any surviving Job tells the state. Each Job also carries the stage state the controller
  last recorded (``text2sql-rlhf.dev/stage-state``).
* Events mark transitions of those recorded annotations (``StageStarted``, ``StageWaiting``,
  ``StageFailed``, ``RunSucceeded``, ``RunFailed``), so each is recorded once per transition even
  after the API server expired it. Events are recorded before the annotations are patched, and
  one whose reason and message is already in the cluster is not recorded again, so a crash in
  between records nothing twice. ``JobConflict`` (and a wait on a missing upstream step) repeat
  only after the API server expired the previous Event: they need a person.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "COMPONENT_LABEL",
    "DEPENDS_ON_ANNOTATION",
    "FAILED_STAGE_ANNOTATION",
    "FIELD_MANAGER",
    "ORDER_ANNOTATION",
    "RUN_LABEL",
    "RUN_STATE_ANNOTATION",
    "STAGE_COMPONENT",
    "STAGE_LABEL",
    "STAGE_STATE_ANNOTATION",
    "Action",
    "AnnotateJob",
    "EventType",
    "JobView",
    "Observed",
    "Plan",
    "Reason",
    "RecordEvent",
    "RunState",
    "StagePlan",
    "StageState",
    "StartStage",
    "decide",
    "job_view",
    "plan",
    "plan_and_decide",
    "run_selector",
    "steps_to_check",
]

RUN_LABEL = "text2sql-rlhf.dev/run-id"
STAGE_LABEL = "text2sql-rlhf.dev/stage"
COMPONENT_LABEL = "app.kubernetes.io/component"
STAGE_COMPONENT = "stage"
ORDER_ANNOTATION = "text2sql-rlhf.dev/order"
DEPENDS_ON_ANNOTATION = "text2sql-rlhf.dev/depends-on"
RUN_STATE_ANNOTATION = "text2sql-rlhf.dev/run-state"
FAILED_STAGE_ANNOTATION = "text2sql-rlhf.dev/failed-stage"
#: the stage state the controller last recorded on a Job: Events mark its transitions
STAGE_STATE_ANNOTATION = "text2sql-rlhf.dev/stage-state"
#: field manager of every write, so ``managedFields`` show which fields the controller owns
FIELD_MANAGER = "t2s-controller"

_STEP_RE = re.compile(r"^[a-z][a-z0-9_]*$")
#: Events are capped at this many characters by the API server; messages are cut before dedup
MAX_MESSAGE = 1024
#: why an upstream step blocks its downstream (besides its own stage state)
COMPLETE_UNPUBLISHED = "is Complete but its manifest is not published"
NO_JOB_UNPUBLISHED = "has no Job in this run and is not published"
CLAIMED_TWICE = "is claimed by more than one Job"


class Reason(StrEnum):
    """Event reasons the controller records (constants: alerts and tests match on them)."""

    STAGE_STARTED = "StageStarted"
    STAGE_FAILED = "StageFailed"
    STAGE_WAITING = "StageWaiting"
    RUN_SUCCEEDED = "RunSucceeded"
    RUN_FAILED = "RunFailed"
    JOB_CONFLICT = "JobConflict"


class EventType(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


class RunState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class StageState(StrEnum):
    """A step's state; ``t2s status`` and the metrics use the same words."""

    PENDING = "pending"  # suspended, or not started yet
    RUNNING = "running"  # unsuspended, not finished
    COMPLETE = "complete"  # Job Complete, manifest not (yet) in the store
    PUBLISHED = "published"  # Job Complete and manifest published: downstream may start
    FAILED = "failed"
    SKIPPED = "skipped"  # will never run: the run failed before it started


_STARTED = frozenset({StageState.RUNNING, StageState.COMPLETE, StageState.PUBLISHED, StageState.FAILED})
_NOT_STARTED = frozenset({None, str(StageState.PENDING), str(StageState.SKIPPED)})


def run_selector(run_id: str | None) -> str:
    """Label selector of one run's Jobs, or of every run's Jobs when ``run_id`` is None."""
    return f"{RUN_LABEL}={run_id}" if run_id else RUN_LABEL


# --------------------------------------------------------------------------------------------
# Observations
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobView:
    """The parts of a Job the decision needs (built from the API's JSON by ``job_view``)."""

    name: str
    uid: str = ""
    resource_version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    suspended: bool = False
    active: int = 0
    complete: bool = False
    failed: bool = False
    failure: str = ""  # reason: message of the Failed condition
    start_time: datetime | None = None
    completion_time: datetime | None = None

    @property
    def stage(self) -> str:
        return self.labels.get(STAGE_LABEL, "")


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not value:
        return None
    return datetime.fromisoformat(str(value))


def _condition_true(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in status.get("conditions") or ():
        if cond.get("type") == kind and str(cond.get("status")) == "True":
            return cond
    return None


def job_view(obj: Mapping[str, Any]) -> JobView:
    """A ``JobView`` of a Job as the API returns it (camelCase JSON)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    failed = _condition_true(status, "Failed")
    failure = ""
    if failed is not None:
        failure = ": ".join(p for p in (failed.get("reason"), failed.get("message")) if p)
    return JobView(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        resource_version=str(meta.get("resourceVersion", "")),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        suspended=bool(spec.get("suspend")),
        active=int(status.get("active") or 0),
        complete=_condition_true(status, "Complete") is not None,
        failed=failed is not None,
        failure=failure,
        start_time=_parse_time(status.get("startTime")),
        completion_time=_parse_time(status.get("completionTime")),
    )


#: (reason, message) of an Event already recorded; the same pair is never recorded twice
EventKey = tuple[str, str]


@dataclass(frozen=True)
class Observed:
    """Everything one reconcile pass looks at: the run's Jobs, its published steps, its Events."""

    run_id: str
    jobs: tuple[JobView, ...] = ()
    published: frozenset[str] = frozenset()
    events: frozenset[EventKey] = frozenset()


# --------------------------------------------------------------------------------------------
# Plan: the derived state of the run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagePlan:
    stage: str
    job: JobView
    order: int
    depends_on: tuple[str, ...]
    state: StageState
    #: upstream steps not satisfied yet, each with why
    blocked_by: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Plan:
    run_id: str
    state: RunState | None  # None: no Job of the run exists (nothing to manage)
    failed_stage: str | None
    stages: tuple[StagePlan, ...]  # stage Jobs, by order
    foreign: tuple[tuple[JobView, str], ...]  # (job, what is wrong with it)
    published: frozenset[str]

    def stage(self, name: str) -> StagePlan | None:
        return next((s for s in self.stages if s.stage == name), None)

    @property
    def waits_on_store(self) -> bool:
        """True while progress hinges on a manifest appearing, which raises no watch event (poll)."""
        if self.state is not RunState.RUNNING:
            return False
        return any(s.state is StageState.COMPLETE for s in self.stages) or any(
            why == NO_JOB_UNPUBLISHED for s in self.stages if s.state is StageState.PENDING for _, why in s.blocked_by)

    @property
    def anchor(self) -> StagePlan | None:
        """The stage Job run-level Events are recorded on: the first by order."""
        return self.stages[0] if self.stages else None


def _problems(job: JobView) -> tuple[list[str], int, tuple[str, ...]]:
    """What keeps ``job`` from being a stage Job of the run, plus its order and upstream steps."""
    problems: list[str] = []
    component = job.labels.get(COMPONENT_LABEL)
    if component != STAGE_COMPONENT:
        problems.append(f"label {COMPONENT_LABEL} is {component!r}, expected {STAGE_COMPONENT!r}")
    stage = job.stage
    if not stage:
        problems.append(f"label {STAGE_LABEL} is missing")
    elif not _STEP_RE.match(stage):
        problems.append(f"label {STAGE_LABEL} {stage!r} is not a step name")
    order = -1
    raw_order = job.annotations.get(ORDER_ANNOTATION)
    try:
        order = int(str(raw_order))
    except ValueError:
        problems.append(f"annotation {ORDER_ANNOTATION} is {raw_order!r}, expected an integer")
    deps: tuple[str, ...] = ()
    raw_deps = job.annotations.get(DEPENDS_ON_ANNOTATION)
    if raw_deps is None:
        problems.append(f"annotation {DEPENDS_ON_ANNOTATION} is missing")
    else:
        deps = tuple(d.strip() for d in raw_deps.split(",") if d.strip())
        bad = [d for d in deps if not _STEP_RE.match(d)]
        if bad:
            problems.append(f"annotation {DEPENDS_ON_ANNOTATION} names invalid steps {bad}")
        if stage and stage in deps:
            problems.append(f"stage {stage!r} depends on itself")
    return problems, order, deps


def _job_state(job: JobView, published: frozenset[str], recorded_failed: set[str]) -> StageState:
    if job.failed or (job.stage in recorded_failed and not job.complete):
        return StageState.FAILED
    if job.complete:
        return StageState.PUBLISHED if job.stage in published else StageState.COMPLETE
    if not job.suspended or job.active > 0:
        return StageState.RUNNING
    return StageState.PENDING


def plan(observed: Observed) -> Plan:
    """The run's derived state: each stage's state, what blocks it, the run state, foreign Jobs."""
    run_id = observed.run_id
    foreign: list[tuple[JobView, str]] = []
    candidates: dict[str, list[tuple[JobView, int, tuple[str, ...]]]] = {}
    for job in sorted(observed.jobs, key=lambda j: j.name):
        if job.labels.get(RUN_LABEL) != run_id:
            continue  # another run's Job: not ours to judge
        problems, order, deps = _problems(job)
        if problems:
            foreign.append((job, "; ".join(problems)))
        else:
            candidates.setdefault(job.stage, []).append((job, order, deps))
    conflicted: set[str] = set()
    valid: list[tuple[JobView, int, tuple[str, ...]]] = []
    for stage, claims in candidates.items():
        if len(claims) > 1:
            conflicted.add(stage)
            names = ", ".join(j.name for j, _, _ in claims)
            foreign.extend((j, f"{len(claims)} Jobs claim stage {stage!r} ({names})") for j, _, _ in claims)
        else:
            valid.append(claims[0])
    valid.sort(key=lambda c: (c[1], c[0].stage))

    # A failure recorded in the annotations outlives the failed Job (ttlSecondsAfterFinished).
    recorded_failed = {j.annotations.get(FAILED_STAGE_ANNOTATION, "") for j, _, _ in valid
                       if j.annotations.get(RUN_STATE_ANNOTATION) == RunState.FAILED} - {""}
    states = {j.stage: _job_state(j, observed.published, recorded_failed) for j, _, _ in valid}

    def blocked(dep: str) -> str | None:  # why ``dep`` does not let its downstream start yet
        if dep in states:
            state = states[dep]
            if state is StageState.PUBLISHED:
                return None
            if state is StageState.COMPLETE:
                return COMPLETE_UNPUBLISHED
            return f"is {state}"
        if dep in conflicted:
            return CLAIMED_TWICE
        if dep in observed.published:
            return None  # no Job in this run renders it: its manifest is the evidence
        return NO_JOB_UNPUBLISHED

    failed_jobs = [j.stage for j, _, _ in valid if states[j.stage] is StageState.FAILED]
    still_failed_recorded = sorted(s for s in recorded_failed if s not in states or states[s] is StageState.FAILED)
    failed_stage = (still_failed_recorded[0] if still_failed_recorded
                    else failed_jobs[0] if failed_jobs else None)

    stages: list[StagePlan] = []
    for job, order, deps in valid:
        state = states[job.stage]
        if failed_stage is not None and state is StageState.PENDING:
            state = StageState.SKIPPED
        waits = tuple((d, why) for d in deps if (why := blocked(d)) is not None)
        stages.append(StagePlan(job.stage, job, order, deps, state, waits))

    if failed_stage is not None:
        run_state: RunState | None = RunState.FAILED
    elif not valid and not conflicted:
        run_state = None
    elif (not conflicted and all(s.state is StageState.PUBLISHED for s in stages)
          and not any(s.blocked_by for s in stages)):
        run_state = RunState.SUCCEEDED
    else:
        run_state = RunState.RUNNING
    return Plan(run_id, run_state, failed_stage, tuple(stages), tuple(foreign), observed.published)


# --------------------------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartStage:
    """Patch ``spec.suspend: false`` on the Job, conditional on the resourceVersion it was seen at."""

    job: str
    stage: str
    resource_version: str


@dataclass(frozen=True)
class AnnotateJob:
    """Merge-patch annotations on a stage Job of the run (a None value removes the annotation)."""

    job: str
    stage: str
    annotations: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class RecordEvent:
    """Record a core/v1 Event about a Job of the run."""

    job: str
    job_uid: str
    stage: str
    reason: Reason
    type: EventType
    message: str

    @property
    def key(self) -> EventKey:
        return (str(self.reason), self.message)


Action = StartStage | AnnotateJob | RecordEvent


def _event(sp_or_job: StagePlan | JobView, reason: Reason, type_: EventType, message: str) -> RecordEvent:
    job = sp_or_job.job if isinstance(sp_or_job, StagePlan) else sp_or_job
    return RecordEvent(job.name, job.uid, job.stage, reason, type_, message[:MAX_MESSAGE])


def started_message(stage: str, job: str) -> str:
    return f"stage {stage} started (Job {job})"


def decide(observed: Observed) -> list[Action]:
    """The actions that move the run towards its desired state; starts come first (latency)."""
    return plan_and_decide(observed)[1]


def plan_and_decide(observed: Observed) -> tuple[Plan, list[Action]]:
    """``plan(observed)`` and the actions ``decide`` derives from it, computed once."""
    p = plan(observed)
    run_id = p.run_id
    starts: list[Action] = []
    events: list[RecordEvent] = []
    stage_states: dict[str, StageState] = {}  # each stage Job's state once this pass is applied

    for job, problem in p.foreign:
        events.append(_event(job, Reason.JOB_CONFLICT, EventType.WARNING,
                             f"Job {job.name} of run {run_id} is not a stage Job the controller can manage: "
                             f"{problem}; it is left untouched"))
    for sp in p.stages:
        name = sp.job.name
        state = sp.state
        recorded = sp.job.annotations.get(STAGE_STATE_ANNOTATION)
        begun = not sp.job.suspended or sp.job.active > 0
        if state is StageState.PENDING and not sp.blocked_by and p.state is RunState.RUNNING:
            starts.append(StartStage(name, sp.stage, sp.job.resource_version))
            state, begun = StageState.RUNNING, True
        # Stage Events mark transitions of the recorded stage-state annotation, so an Event is
        # recorded once per transition even after the API server has expired the first one.
        if str(state) != recorded:
            if state in _STARTED and recorded in _NOT_STARTED and begun:
                events.append(_event(sp, Reason.STAGE_STARTED, EventType.NORMAL, started_message(sp.stage, name)))
            if state is StageState.COMPLETE:
                events.append(_event(sp, Reason.STAGE_WAITING, EventType.NORMAL,
                                     f"Job {name} is Complete but runs/{run_id}/{sp.stage}/_manifest.json is not "
                                     "in the artifact store; downstream stages wait for it"))
            elif state is StageState.FAILED:
                why = f": {sp.job.failure}" if sp.job.failure else ""
                events.append(_event(sp, Reason.STAGE_FAILED, EventType.WARNING,
                                     f"stage {sp.stage} failed (Job {name}){why}"))
        if state is StageState.PENDING and p.state is RunState.RUNNING:
            for dep, why in sp.blocked_by:
                if why in (NO_JOB_UNPUBLISHED, CLAIMED_TWICE):  # needs a person: say it (again after expiry)
                    events.append(_event(sp, Reason.STAGE_WAITING, EventType.NORMAL,
                                         f"stage {sp.stage} waits for upstream step {dep}, which {why}"))
        stage_states[name] = state

    anchor = p.anchor
    annotations: list[Action] = []
    if p.state is not None and anchor is not None:
        if anchor.job.annotations.get(RUN_STATE_ANNOTATION) != str(p.state):
            if p.state is RunState.SUCCEEDED:
                events.append(_event(anchor, Reason.RUN_SUCCEEDED, EventType.NORMAL,
                                     f"run {run_id} succeeded: {len(p.stages)} stages complete and published"))
            elif p.state is RunState.FAILED:
                events.append(_event(anchor, Reason.RUN_FAILED, EventType.WARNING,
                                     f"run {run_id} failed at stage {p.failed_stage}; no further stage will start"))
        for sp in p.stages:
            wanted = {RUN_STATE_ANNOTATION: str(p.state), FAILED_STAGE_ANNOTATION: p.failed_stage,
                      STAGE_STATE_ANNOTATION: str(stage_states[sp.job.name])}
            if {k: sp.job.annotations.get(k) for k in wanted} != wanted:
                annotations.append(AnnotateJob(sp.job.name, sp.stage, tuple(sorted(wanted.items()))))

    # An Event already in the cluster (e.g. recorded just before a restart) is not recorded again;
    # annotations come last, so a crash in between is caught by this check.
    fresh: list[RecordEvent] = []
    seen = set(observed.events)
    for ev in events:
        if ev.key not in seen:
            seen.add(ev.key)
            fresh.append(ev)
    return p, [*starts, *fresh, *annotations]


def steps_to_check(jobs: Iterable[JobView], run_id: str) -> set[str]:
    """Steps whose manifests a pass must look up: every stage label and every upstream step."""
    steps: set[str] = set()
    for job in jobs:
        if job.labels.get(RUN_LABEL) != run_id:
            continue
        if _STEP_RE.match(job.stage or "-"):
            steps.add(job.stage)
        deps = job.annotations.get(DEPENDS_ON_ANNOTATION) or ""
        steps.update(d.strip() for d in deps.split(",") if _STEP_RE.match(d.strip()))
    return steps
