"""What the stage controller should do, as a pure function of what it observes.

The controller is level-triggered: every pass re-reads the run's Jobs, the run's Job specs (the
ConfigMap the chart renders), the Events it already recorded and the set of published steps, and
``decide(observed)`` returns the actions that move the cluster towards the desired state. Nothing
is remembered between passes, so a controller killed at any point and restarted computes the same
actions from the same observations.

The controller **creates** each stage Job once its upstream steps are published; it never writes
``spec.suspend``. That field belongs to whoever schedules the Job: the Job is created as the chart
rendered it (``suspend: true`` with Kueue, which unsuspends it on admission and suspends it again on
preemption; ``suspend: false`` without). So a queueing system and the controller never fight over
one field, whether or not Kueue also manages Jobs without a queue label.

Rules (``plan`` computes them, ``decide`` turns them into actions):

* A Job belongs to the run when it carries ``text2sql-rlhf.dev/run-id: <run>``. It is a *stage
  Job* when it also has ``app.kubernetes.io/component: stage``, a ``text2sql-rlhf.dev/stage``
  label, an integer ``text2sql-rlhf.dev/order`` annotation and a ``text2sql-rlhf.dev/depends-on``
  annotation (comma-separated upstream steps, empty for prepare). Any other Job of the run, and
  every Job of a stage claimed by more than one Job, is *foreign*: it gets a ``JobConflict``
  Warning Event and is never changed.
* The run's *specs* (``app.kubernetes.io/component: stage-specs`` ConfigMap, one Job manifest per
  step) say which steps the run has. A step with a spec and no Job is *pending*.
* An upstream step is satisfied when its Job is Complete **and** its manifest is published. A step
  that no Job or spec of the run renders (disabled in the chart, or its Job deleted after its TTL)
  is satisfied by its manifest alone. A Complete Job without a manifest is waited for, never trusted.
* A pending step whose upstream steps are all satisfied, and which is not published yet, gets its
  Job created from its spec, owned by the spec ConfigMap (``helm uninstall`` removes it). The name
  is fixed by the spec, so a second create answers 409 and a stage never starts twice.
* A suspended stage Job is *queued* (waiting for admission) or, when the controller last saw it
  running, *preempted*: neither fails the run, the Job resumes from its newest checkpoint when its
  queue admits it again, and each preemption is counted (``text2sql-rlhf.dev/preemptions``).
* A running stage Job whose pod was *disrupted* (condition ``DisruptionTarget``, which Kubernetes
  sets for a scheduler preemption, a taint-manager deletion, an Eviction API call or a node-pressure
  eviction, or an older kubelet's phase ``Failed`` with reason ``Evicted``) is *preempted* too, until
  a pod of that completion index runs again. The chart's podFailurePolicy ignores such a pod's
  failure (``Ignore`` on ``DisruptionTarget``), so it never uses up backoffLimit and the Job
  controller replaces it; the replacement resumes from the newest checkpoint. The disrupted pod may
  be deleted before its replacement runs (an Eviction API call deletes it), so a Job recorded
  preempted stays preempted until one of its pods runs (Job ``status.ready`` or a Running pod).
  Without the pods (no RBAC to list them) a disruption is not seen: the stage reads as running.
* A Failed Job fails the run: nothing is created any more, the run is annotated ``failed`` with the
  failed stage, and a ``RunFailed`` Event is recorded. The failure is read back from the
  annotations too, so it survives the failed Job being garbage-collected.
* The run state (``text2sql-rlhf.dev/run-state``: running/succeeded/failed, with
  ``text2sql-rlhf.dev/failed-stage``) is written as an annotation on **every** stage Job of the
  run, so any surviving Job tells the state. Each Job also carries the stage state the controller
  last recorded (``text2sql-rlhf.dev/stage-state``).
* Events mark transitions of those recorded annotations (``StageStarted``, ``StageQueued``,
  ``StagePreempted``, ``StageResumed``, ``StageWaiting``, ``StageFailed``, ``RunSucceeded``,
  ``RunFailed``), so each is recorded once per transition even after the API server expired it.
  Events are recorded before the annotations are patched, and one whose reason and message is
  already in the cluster is not recorded again, so a crash in between records nothing twice.
  ``JobConflict``, ``SpecInvalid`` and a wait on a missing upstream step repeat only after the API
  server expired the previous Event: they need a person.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "COMPLETION_INDEX_LABEL",
    "COMPONENT_LABEL",
    "DEPENDS_ON_ANNOTATION",
    "DISRUPTION_TARGET",
    "FAILED_STAGE_ANNOTATION",
    "FIELD_MANAGER",
    "JOB_NAME_LABEL",
    "ORDER_ANNOTATION",
    "PREEMPTIONS_ANNOTATION",
    "RUN_LABEL",
    "RUN_STATE_ANNOTATION",
    "SPECS_COMPONENT",
    "STAGE_COMPONENT",
    "STAGE_LABEL",
    "STAGE_STATE_ANNOTATION",
    "Action",
    "AnnotateJob",
    "CreateStage",
    "EventType",
    "JobView",
    "Observed",
    "Plan",
    "PodView",
    "Reason",
    "RecordEvent",
    "RunState",
    "SpecSource",
    "StagePlan",
    "StageSpec",
    "StageState",
    "decide",
    "disruption_of",
    "job_view",
    "plan",
    "plan_and_decide",
    "pod_selector",
    "pod_view",
    "run_selector",
    "runs_a_pod",
    "spec_source",
    "specs_selector",
    "started_message",
    "steps_to_check",
]

RUN_LABEL = "text2sql-rlhf.dev/run-id"
STAGE_LABEL = "text2sql-rlhf.dev/stage"
COMPONENT_LABEL = "app.kubernetes.io/component"
STAGE_COMPONENT = "stage"
#: component label of the ConfigMap holding a run's Job specs
SPECS_COMPONENT = "stage-specs"
ORDER_ANNOTATION = "text2sql-rlhf.dev/order"
DEPENDS_ON_ANNOTATION = "text2sql-rlhf.dev/depends-on"
RUN_STATE_ANNOTATION = "text2sql-rlhf.dev/run-state"
FAILED_STAGE_ANNOTATION = "text2sql-rlhf.dev/failed-stage"
#: the stage state the controller last recorded on a Job: Events mark its transitions
STAGE_STATE_ANNOTATION = "text2sql-rlhf.dev/stage-state"
#: how often the stage was stopped while running (Kueue preemption or eviction)
PREEMPTIONS_ANNOTATION = "text2sql-rlhf.dev/preemptions"
#: labels the Job controller puts on a Job's pods (the name of the Job; the index of an Indexed Job)
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
#: the pod condition Kubernetes sets before it terminates a pod for a disruption (1.26+)
DISRUPTION_TARGET = "DisruptionTarget"
#: field manager of every write, so ``managedFields`` show which fields the controller owns
FIELD_MANAGER = "t2s-controller"

_STEP_RE = re.compile(r"^[a-z][a-z0-9_]*$")
#: Events are capped at this many characters by the API server; messages are cut before dedup
MAX_MESSAGE = 1024
#: why an upstream step blocks its downstream (besides its own stage state)
COMPLETE_UNPUBLISHED = "is Complete but its manifest is not published"
NO_JOB_UNPUBLISHED = "has no Job in this run and is not published"
CLAIMED_TWICE = "is claimed by more than one Job"
#: stage-state recorded on a Job in the pass that created it (before its scheduler had a say)
CREATED = "created"


class Reason(StrEnum):
    """Event reasons the controller records (constants: alerts and tests match on them)."""

    STAGE_STARTED = "StageStarted"
    STAGE_QUEUED = "StageQueued"
    STAGE_PREEMPTED = "StagePreempted"
    STAGE_RESUMED = "StageResumed"
    STAGE_FAILED = "StageFailed"
    STAGE_WAITING = "StageWaiting"
    RUN_SUCCEEDED = "RunSucceeded"
    RUN_FAILED = "RunFailed"
    JOB_CONFLICT = "JobConflict"
    SPEC_INVALID = "SpecInvalid"


class EventType(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


class RunState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class StageState(StrEnum):
    """A step's state; ``t2s status`` and the metrics use the same words."""

    PENDING = "pending"  # no Job yet: its upstream steps are not published
    QUEUED = "queued"  # Job created, suspended by its queue (Kueue): waits for admission
    RUNNING = "running"  # Job not suspended, not finished
    PREEMPTED = "preempted"  # suspended again after it ran: resumes from its checkpoint when re-admitted
    COMPLETE = "complete"  # Job Complete, manifest not (yet) in the store
    PUBLISHED = "published"  # Job Complete and manifest published: downstream may start
    FAILED = "failed"
    SKIPPED = "skipped"  # will never run: the run failed before it started


#: recorded stage states after which a Job of the stage exists (StageStarted was due)
_NOT_CREATED = frozenset({None, str(StageState.PENDING), str(StageState.SKIPPED)})
#: recorded stage states that make a suspended Job a preempted one
_WAS_RUNNING = frozenset({str(StageState.RUNNING), str(StageState.PREEMPTED)})


def run_selector(run_id: str | None) -> str:
    """Label selector of one run's Jobs, or of every run's Jobs when ``run_id`` is None."""
    return f"{RUN_LABEL}={run_id}" if run_id else RUN_LABEL


def pod_selector(run_id: str | None) -> str:
    """Label selector of one run's stage pods (the chart labels them with the run, as their Jobs)."""
    return run_selector(run_id)


def specs_selector(run_id: str | None) -> str:
    """Label selector of one run's spec ConfigMap (or every run's)."""
    return f"{run_selector(run_id)},{COMPONENT_LABEL}={SPECS_COMPONENT}"


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
    #: pods of the Job that run and are ready (``status.ready``)
    ready: int = 0
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
        ready=int(status.get("ready") or 0),
        complete=_condition_true(status, "Complete") is not None,
        failed=failed is not None,
        failure=failure,
        start_time=_parse_time(status.get("startTime")),
        completion_time=_parse_time(status.get("completionTime")),
    )


@dataclass(frozen=True)
class PodView:
    """The parts of a stage pod the decision needs: its Job, index, phase and any disruption."""

    name: str
    job: str
    phase: str = "Pending"
    index: str = ""  # completion index of an Indexed Job's pod, "" otherwise
    #: why Kubernetes disrupted the pod ("reason: message"), "" when it was not
    disruption: str = ""


def pod_view(obj: Mapping[str, Any]) -> PodView:
    """A ``PodView`` of a pod as the API returns it; its Job comes from the Job controller's label or
    from its controller owner reference."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    status = obj.get("status") or {}
    job = labels.get(JOB_NAME_LABEL) or labels.get("job-name") or next(
        (o.get("name", "") for o in meta.get("ownerReferences") or () if o.get("kind") == "Job" and o.get("controller")),
        "")
    index = labels.get(COMPLETION_INDEX_LABEL) or (meta.get("annotations") or {}).get(COMPLETION_INDEX_LABEL) or ""
    phase = str(status.get("phase") or "Pending")
    disruption = ""
    cond = _condition_true(status, DISRUPTION_TARGET)
    if cond is not None:
        disruption = ": ".join(p for p in (cond.get("reason") or DISRUPTION_TARGET, cond.get("message")) if p)
    elif phase == "Failed" and status.get("reason") == "Evicted":  # a kubelet older than 1.26
        disruption = ": ".join(p for p in ("Evicted", status.get("message")) if p)
    return PodView(str(meta.get("name", "")), str(job), phase, str(index), disruption)


def disruption_of(job: JobView, pods: Iterable[PodView]) -> str:
    """Why a pod of ``job`` was disrupted ("pod <name>: <reason>: <message>"), for the first completion
    index that has a disrupted pod (terminating or terminated) and no other pod running or succeeded;
    "" when there is none."""
    by_index: dict[str, list[PodView]] = {}
    for pod in pods:
        if pod.job == job.name:
            by_index.setdefault(pod.index, []).append(pod)
    for index in sorted(by_index):
        group = by_index[index]
        if any(p.phase in ("Running", "Succeeded") and not p.disruption for p in group):
            continue
        disrupted = next((p for p in sorted(group, key=lambda p: p.name) if p.disruption), None)
        if disrupted is not None:
            return f"pod {disrupted.name}: {disrupted.disruption}"
    return ""


def runs_a_pod(job: JobView, pods: Iterable[PodView]) -> bool:
    """A pod of ``job`` runs: the Job counts a ready pod, or one of its pods is in phase Running."""
    return job.ready > 0 or any(p.job == job.name and p.phase == "Running" and not p.disruption for p in pods)


@dataclass(frozen=True)
class StageSpec:
    """One step's Job manifest as the chart rendered it (the controller creates it verbatim)."""

    step: str
    order: int
    depends_on: tuple[str, ...]
    job: Mapping[str, Any]

    @property
    def job_name(self) -> str:
        return str(self.job["metadata"]["name"])


@dataclass(frozen=True)
class SpecSource:
    """The ConfigMap holding a run's Job specs; created Jobs are owned by it."""

    name: str
    uid: str
    specs: tuple[StageSpec, ...] = ()
    #: entries that are not a usable stage Job spec, each with why (they are never created)
    problems: tuple[str, ...] = ()

    def spec(self, step: str) -> StageSpec | None:
        return next((s for s in self.specs if s.step == step), None)


def spec_source(configmap: Mapping[str, Any], run_id: str) -> SpecSource:
    """Parse the spec ConfigMap (``data.<step>.yaml``: a batch/v1 Job of that step of ``run_id``)."""
    import yaml

    meta = configmap.get("metadata") or {}
    specs: list[StageSpec] = []
    problems: list[str] = []
    for key, text in sorted((configmap.get("data") or {}).items()):
        step = key.removesuffix(".yaml")
        where = f"data.{key}"
        try:
            job = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            problems.append(f"{where} is not YAML: {exc}".replace("\n", " "))
            continue
        if not isinstance(job, dict) or job.get("apiVersion") != "batch/v1" or job.get("kind") != "Job":
            problems.append(f"{where} is not a batch/v1 Job")
            continue
        view = job_view(job)
        issues, order, deps = _problems(view)
        if not key.endswith(".yaml") or view.stage != step:
            issues.append(f"its {STAGE_LABEL} label {view.stage!r} does not match the key")
        if view.labels.get(RUN_LABEL) != run_id:
            issues.append(f"its {RUN_LABEL} label {view.labels.get(RUN_LABEL)!r} is not {run_id!r}")
        if not view.name:
            issues.append("metadata.name is missing")
        if issues:
            problems.append(f"{where}: " + "; ".join(issues))
            continue
        specs.append(StageSpec(step, order, deps, job))
    return SpecSource(str(meta.get("name", "")), str(meta.get("uid", "")), tuple(specs), tuple(problems))


#: (reason, message) of an Event already recorded; the same pair is never recorded twice
EventKey = tuple[str, str]


@dataclass(frozen=True)
class Observed:
    """Everything one reconcile pass looks at: the run's Jobs and specs, its published steps, its Events."""

    run_id: str
    jobs: tuple[JobView, ...] = ()
    published: frozenset[str] = frozenset()
    events: frozenset[EventKey] = frozenset()
    source: SpecSource | None = None
    #: the run's stage pods; None when they could not be listed (disruptions are then not seen)
    pods: tuple[PodView, ...] | None = None


# --------------------------------------------------------------------------------------------
# Plan: the derived state of the run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagePlan:
    stage: str
    job: JobView | None  # None: no Job yet (only a spec)
    order: int
    depends_on: tuple[str, ...]
    state: StageState
    #: upstream steps not satisfied yet, each with why
    blocked_by: tuple[tuple[str, str], ...] = ()
    spec: StageSpec | None = None
    #: preempted while not suspended: which pod was disrupted and why ("" otherwise)
    disruption: str = ""

    @property
    def job_name(self) -> str:
        if self.job is not None:
            return self.job.name
        return self.spec.job_name if self.spec is not None else ""

    @property
    def preemptions(self) -> int:
        raw = (self.job.annotations if self.job is not None else {}).get(PREEMPTIONS_ANNOTATION, "0")
        return int(raw) if str(raw).isdigit() else 0


@dataclass(frozen=True)
class Plan:
    run_id: str
    state: RunState | None  # None: neither a Job nor a spec of the run exists (nothing to manage)
    failed_stage: str | None
    stages: tuple[StagePlan, ...]  # stage Jobs and specs, by order
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
        """The stage Job run-level Events are recorded on: the first existing one by order."""
        return next((s for s in self.stages if s.job is not None), None)


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


def _job_state(job: JobView, published: frozenset[str], recorded_failed: set[str],
               pods: tuple[PodView, ...] | None) -> tuple[StageState, str]:
    """The stage state of ``job``, and (when preempted by a disruption) which pod was disrupted."""
    if job.failed or (job.stage in recorded_failed and not job.complete):
        return StageState.FAILED, ""
    if job.complete:
        return (StageState.PUBLISHED if job.stage in published else StageState.COMPLETE), ""
    recorded = job.annotations.get(STAGE_STATE_ANNOTATION)
    if job.suspended:
        # suspended by its queue: before it ever ran it waits, after it ran it was preempted
        return (StageState.PREEMPTED if recorded in _WAS_RUNNING else StageState.QUEUED), ""
    if pods is not None:
        disruption = disruption_of(job, pods)
        if disruption:
            return StageState.PREEMPTED, disruption
        if recorded == StageState.PREEMPTED and not runs_a_pod(job, pods):
            return StageState.PREEMPTED, ""  # the disrupted pod is gone, its replacement does not run yet
    return StageState.RUNNING, ""


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
    source = observed.source
    specs = {s.step: s for s in (source.specs if source is not None else ())}
    with_job = {j.stage for j, _, _ in valid}
    spec_only = [s for step, s in specs.items() if step not in with_job and step not in conflicted]

    # A failure recorded in the annotations outlives the failed Job (ttlSecondsAfterFinished).
    recorded_failed = {j.annotations.get(FAILED_STAGE_ANNOTATION, "") for j, _, _ in valid
                       if j.annotations.get(RUN_STATE_ANNOTATION) == RunState.FAILED} - {""}
    judged = {j.stage: _job_state(j, observed.published, recorded_failed, observed.pods) for j, _, _ in valid}
    states = {stage: state for stage, (state, _) in judged.items()}
    for s in spec_only:
        states[s.step] = (StageState.PUBLISHED if s.step in observed.published
                          else StageState.FAILED if s.step in recorded_failed else StageState.PENDING)

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

    entries: list[tuple[str, JobView | None, int, tuple[str, ...]]] = [(j.stage, j, o, d) for j, o, d in valid]
    entries += [(s.step, None, s.order, s.depends_on) for s in spec_only]
    entries.sort(key=lambda e: (e[2], e[0]))
    stages: list[StagePlan] = []
    for stage, job, order, deps in entries:
        state = states[stage]
        if failed_stage is not None and state in (StageState.PENDING, StageState.QUEUED):
            state = StageState.SKIPPED
        waits = tuple((d, why) for d in deps if (why := blocked(d)) is not None)
        disruption = judged[stage][1] if stage in judged and state is StageState.PREEMPTED else ""
        stages.append(StagePlan(stage, job, order, deps, state, waits, specs.get(stage), disruption))

    if failed_stage is not None:
        run_state: RunState | None = RunState.FAILED
    elif not stages and not conflicted:
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
class CreateStage:
    """Create the step's Job from its spec (owned by the spec ConfigMap); 409 means it exists."""

    job: str
    stage: str
    body: Mapping[str, Any] = field(compare=False, repr=False, default_factory=dict)


@dataclass(frozen=True)
class AnnotateJob:
    """Merge-patch annotations on a stage Job of the run (a None value removes the annotation)."""

    job: str
    stage: str
    annotations: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class RecordEvent:
    """Record a core/v1 Event about an object of the run (a stage Job, or the spec ConfigMap)."""

    job: str
    job_uid: str
    stage: str
    reason: Reason
    type: EventType
    message: str
    kind: str = "Job"

    @property
    def key(self) -> EventKey:
        return (str(self.reason), self.message)


Action = CreateStage | AnnotateJob | RecordEvent


def _event(sp_or_job: StagePlan | JobView, reason: Reason, type_: EventType, message: str) -> RecordEvent:
    if isinstance(sp_or_job, StagePlan):
        job = sp_or_job.job
        name, uid, stage = sp_or_job.job_name, job.uid if job is not None else "", sp_or_job.stage
    else:
        name, uid, stage = sp_or_job.name, sp_or_job.uid, sp_or_job.stage
    return RecordEvent(name, uid, stage, reason, type_, message[:MAX_MESSAGE])


def started_message(stage: str, job: str) -> str:
    return f"stage {stage} started (Job {job} created)"


def _quantities_as_strings(pod: dict[str, Any]) -> None:
    """Resource quantities as strings (``gpus: 1`` renders ``nvidia.com/gpu: 1``): the API server takes
    either, but the typed client validates a Job's quantities as strings and would refuse the create."""
    def fix(mapping: Any) -> None:
        if isinstance(mapping, dict):
            for key, value in mapping.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    mapping[key] = str(value)

    for container in [*(pod.get("containers") or ()), *(pod.get("initContainers") or ())]:
        resources = container.get("resources") or {}
        fix(resources.get("limits"))
        fix(resources.get("requests"))
    fix(pod.get("overhead"))
    for volume in pod.get("volumes") or ():
        empty_dir = volume.get("emptyDir")
        if isinstance(empty_dir, dict) and isinstance(empty_dir.get("sizeLimit"), int | float):
            empty_dir["sizeLimit"] = str(empty_dir["sizeLimit"])


def _created_body(spec: StageSpec, source: SpecSource) -> dict[str, Any]:
    """The spec as a create request: owned by the spec ConfigMap, so uninstalling the release removes it."""
    body = copy.deepcopy(dict(spec.job))
    meta = body.setdefault("metadata", {})
    meta.pop("namespace", None)
    meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": source.name, "uid": source.uid}]
    _quantities_as_strings(((body.get("spec") or {}).get("template") or {}).get("spec") or {})
    return body


def decide(observed: Observed) -> list[Action]:
    """The actions that move the run towards its desired state; creates come first (latency)."""
    return plan_and_decide(observed)[1]


def plan_and_decide(observed: Observed) -> tuple[Plan, list[Action]]:
    """``plan(observed)`` and the actions ``decide`` derives from it, computed once."""
    p = plan(observed)
    run_id = p.run_id
    source = observed.source
    creates: list[Action] = []
    events: list[RecordEvent] = []
    recorded_after: dict[str, tuple[str, int]] = {}  # Job name -> (stage state, preemptions) once applied

    for job, problem in p.foreign:
        events.append(_event(job, Reason.JOB_CONFLICT, EventType.WARNING,
                             f"Job {job.name} of run {run_id} is not a stage Job the controller can manage: "
                             f"{problem}; it is left untouched"))
    if source is not None:
        for problem in source.problems:
            events.append(RecordEvent(source.name, source.uid, "", Reason.SPEC_INVALID, EventType.WARNING,
                                      f"ConfigMap {source.name} holds a Job spec the controller cannot create: "
                                      f"{problem}"[:MAX_MESSAGE], kind="ConfigMap"))
    for sp in p.stages:
        state = sp.state
        ready = state is StageState.PENDING and not sp.blocked_by and p.state is RunState.RUNNING
        if sp.job is None:
            if ready and sp.spec is not None and source is not None:
                creates.append(CreateStage(sp.job_name, sp.stage, _created_body(sp.spec, source)))
                events.append(_event(sp, Reason.STAGE_STARTED, EventType.NORMAL,
                                     started_message(sp.stage, sp.job_name)))
                recorded_after[sp.job_name] = (CREATED, 0)
            elif state is StageState.PENDING and p.state is RunState.RUNNING:
                for dep, why in sp.blocked_by:
                    if why in (NO_JOB_UNPUBLISHED, CLAIMED_TWICE):  # needs a person: say it (again after expiry)
                        events.append(_event(sp, Reason.STAGE_WAITING, EventType.NORMAL,
                                             f"stage {sp.stage} waits for upstream step {dep}, which {why}"))
            continue
        name = sp.job.name
        recorded = sp.job.annotations.get(STAGE_STATE_ANNOTATION)
        preemptions = sp.preemptions
        # Stage Events mark transitions of the recorded stage-state annotation, so an Event is
        # recorded once per transition even after the API server has expired the first one.
        if str(state) != recorded:
            if recorded in _NOT_CREATED and state is not StageState.SKIPPED:
                events.append(_event(sp, Reason.STAGE_STARTED, EventType.NORMAL, started_message(sp.stage, name)))
            if state is StageState.QUEUED:
                events.append(_event(sp, Reason.STAGE_QUEUED, EventType.NORMAL,
                                     f"stage {sp.stage} waits for admission: Job {name} is suspended by its queue "
                                     "(Kueue) or another scheduler, which owns spec.suspend"))
            elif state is StageState.PREEMPTED and not sp.job.suspended:
                preemptions += 1
                why = sp.disruption or f"a pod of Job {name} was disrupted"
                events.append(_event(sp, Reason.STAGE_PREEMPTED, EventType.NORMAL,
                                     f"stage {sp.stage} was stopped while running (preemption {preemptions}: "
                                     f"{why}); it resumes from its newest checkpoint when a new pod runs"))
            elif state is StageState.PREEMPTED:
                preemptions += 1
                events.append(_event(sp, Reason.STAGE_PREEMPTED, EventType.NORMAL,
                                     f"stage {sp.stage} was stopped while running (preemption {preemptions}: Job "
                                     f"{name} suspended by its queue); it resumes from its newest checkpoint "
                                     "when admitted again"))
            elif state is StageState.RUNNING and recorded == StageState.PREEMPTED:
                events.append(_event(sp, Reason.STAGE_RESUMED, EventType.NORMAL,
                                     f"stage {sp.stage} runs again after preemption {preemptions} (Job {name})"))
            elif state is StageState.COMPLETE:
                events.append(_event(sp, Reason.STAGE_WAITING, EventType.NORMAL,
                                     f"Job {name} is Complete but runs/{run_id}/{sp.stage}/_manifest.json is not "
                                     "in the artifact store; downstream stages wait for it"))
            elif state is StageState.FAILED:
                why = f": {sp.job.failure}" if sp.job.failure else ""
                events.append(_event(sp, Reason.STAGE_FAILED, EventType.WARNING,
                                     f"stage {sp.stage} failed (Job {name}){why}"))
        recorded_after[name] = (str(state), preemptions)

    anchor = p.anchor
    annotations: list[Action] = []
    if (p.state is not None and anchor is not None and anchor.job is not None
            and anchor.job.annotations.get(RUN_STATE_ANNOTATION) != str(p.state)):
        if p.state is RunState.SUCCEEDED:
            events.append(_event(anchor, Reason.RUN_SUCCEEDED, EventType.NORMAL,
                                 f"run {run_id} succeeded: {len(p.stages)} stages complete and published"))
        elif p.state is RunState.FAILED:
            events.append(_event(anchor, Reason.RUN_FAILED, EventType.WARNING,
                                 f"run {run_id} failed at stage {p.failed_stage}; no further stage will start"))
    if p.state is not None:
        for sp in p.stages:
            if sp.job_name not in recorded_after:
                continue
            stage_state, preemptions = recorded_after[sp.job_name]
            wanted: dict[str, str | None] = {RUN_STATE_ANNOTATION: str(p.state),
                                             FAILED_STAGE_ANNOTATION: p.failed_stage,
                                             STAGE_STATE_ANNOTATION: stage_state}
            if preemptions:
                wanted[PREEMPTIONS_ANNOTATION] = str(preemptions)
            current = sp.job.annotations if sp.job is not None else {}
            if sp.job is None or {k: current.get(k) for k in wanted} != wanted:
                annotations.append(AnnotateJob(sp.job_name, sp.stage, tuple(sorted(wanted.items()))))

    # An Event already in the cluster (e.g. recorded just before a restart) is not recorded again;
    # annotations come last, so a crash in between is caught by this check.
    fresh: list[RecordEvent] = []
    seen = set(observed.events)
    for ev in events:
        if ev.key not in seen:
            seen.add(ev.key)
            fresh.append(ev)
    return p, [*creates, *fresh, *annotations]


def steps_to_check(jobs: Iterable[JobView], run_id: str, source: SpecSource | None = None) -> set[str]:
    """Steps whose manifests a pass must look up: every stage label, spec and upstream step."""
    steps: set[str] = set()
    for job in jobs:
        if job.labels.get(RUN_LABEL) != run_id:
            continue
        if _STEP_RE.match(job.stage or "-"):
            steps.add(job.stage)
        deps = job.annotations.get(DEPENDS_ON_ANNOTATION) or ""
        steps.update(d.strip() for d in deps.split(",") if _STEP_RE.match(d.strip()))
    for spec in source.specs if source is not None else ():
        steps.add(spec.step)
        steps.update(spec.depends_on)
    return steps
