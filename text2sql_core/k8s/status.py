"""``t2s status``: a run's steps with their state, duration and key metrics.

The artifact store is the source of truth for what is *done* (a step's manifest), so the status
works with the store alone, e.g. for a local embedded run. When the run's Jobs are available too
(a reachable cluster), each step's state comes from the same ``plan()`` the controller uses, so
``t2s status`` and the controller never disagree about a stage.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .decide import Observed, RunState, StageState, job_view, plan, pod_view

__all__ = ["RunStatus", "StepStatus", "collect_status", "format_status", "key_metrics", "newest_checkpoint"]

#: metric-name tokens shown in the table (``ex``, ``em``, ``train_loss``, ``reward_mean``, ``rm_accuracy``)
KEY_METRIC_TOKENS = frozenset({"ex", "em", "loss", "reward", "accuracy", "acc"})


def key_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric metrics whose name has a token from ``KEY_METRIC_TOKENS`` (``train_examples`` has none)."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        tokens = set(re.split(r"[^a-z0-9]+", str(name).lower()))
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if tokens & KEY_METRIC_TOKENS and numeric and math.isfinite(float(value)):
            out[str(name)] = float(value)
    return out


@dataclass(frozen=True)
class StepStatus:
    step: str
    state: str  # a StageState value
    duration_s: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    job: str | None = None
    note: str = ""


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    state: str  # pending | running | succeeded | failed
    steps: tuple[StepStatus, ...]
    cluster: bool  # True when Job states were read from a cluster
    failed_stage: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "state": self.state, "failed_stage": self.failed_stage,
                "cluster": self.cluster,
                "steps": [{"step": s.step, "state": s.state, "duration_s": s.duration_s, "metrics": s.metrics,
                           "job": s.job, "note": s.note} for s in self.steps]}


def _store_state(store: Any, run_id: str, step: str) -> tuple[str, float | None, dict[str, float], str]:
    """(state, duration, key metrics, note) of a step from the store alone."""
    from ..errors import BadInput
    from ..store.manifest import read_manifest

    prefix = f"runs/{run_id}/{step}"
    try:
        manifest = read_manifest(store, prefix)
    except BadInput as exc:
        return StageState.PENDING, None, {}, f"corrupt manifest: {exc.message}"
    if manifest is not None:
        duration = (manifest.finished_at - manifest.started_at).total_seconds()
        return StageState.PUBLISHED, duration, key_metrics(manifest.metrics), ""
    if store.list(prefix):  # checkpoints or a publish in progress, but no manifest yet
        return StageState.RUNNING, None, {}, "outputs or checkpoints without a manifest"
    return StageState.PENDING, None, {}, ""


def newest_checkpoint(store: Any, run_id: str, step: str) -> int | None:
    """Training step of the step's newest complete checkpoint (its ``_manifest.json`` exists), or None."""
    prefix = f"runs/{run_id}/{step}/_checkpoints/"
    steps = [int(parts[0]) for info in store.list(prefix)
             if len(parts := info.key[len(prefix):].split("/")) == 2 and parts[1] == "_manifest.json"
             and parts[0].isdigit()]
    return max(steps) if steps else None


def collect_status(run_id: str, store: Any, *, steps: Sequence[str],
                   jobs: Sequence[Mapping[str, Any]] | None = None,
                   pods: Sequence[Mapping[str, Any]] | None = None, now: datetime | None = None) -> RunStatus:
    """The status of ``run_id``: ``steps`` in order (plus any other stage a Job renders).

    ``jobs`` are the run's Jobs as API JSON, or None when no cluster is reachable; ``pods`` its
    stage pods, or None when they cannot be read (a disrupted stage then reads as running).
    """
    now = now or datetime.now(UTC)
    from_store = {s: _store_state(store, run_id, s) for s in steps}
    if not jobs:  # no cluster, or no Job of this run in it (a local run): the store says it all
        rows = [StepStatus(s, str(st), dur, met, note=note) for s, (st, dur, met, note) in from_store.items()]
        states = {r.state for r in rows}
        if states == {StageState.PUBLISHED}:
            run_state = RunState.SUCCEEDED
        elif states & {StageState.PUBLISHED, StageState.RUNNING}:
            run_state = RunState.RUNNING
        else:
            run_state = "pending"
        return RunStatus(run_id, str(run_state), tuple(rows), cluster=jobs is not None)

    views = tuple(job_view(j) for j in jobs)
    extra = [v.stage for v in views if v.stage and v.stage not in from_store]
    for stage in extra:
        from_store[stage] = _store_state(store, run_id, stage)
    published = frozenset(s for s, (st, *_rest) in from_store.items() if st == StageState.PUBLISHED)
    pod_views = None if pods is None else tuple(pod_view(p) for p in pods)
    p = plan(Observed(run_id, views, published, pods=pod_views))
    rows = []
    for step, (st, duration, metrics, note) in from_store.items():
        sp = p.stage(step)
        if sp is None or sp.job is None:
            if st == StageState.PENDING and p.state is RunState.FAILED:
                st = StageState.SKIPPED
            rows.append(StepStatus(step, str(st), duration, metrics,
                                   note=note or "no Job yet; state from the store"))
            continue
        if duration is None and sp.job.start_time is not None:
            duration = ((sp.job.completion_time or now) - sp.job.start_time).total_seconds()
        if sp.state is StageState.COMPLETE:
            note = "Job Complete, manifest not in the store yet"
        elif sp.state is StageState.FAILED and sp.job.failure:
            note = sp.job.failure
        elif sp.state is StageState.QUEUED:
            note = "suspended by its queue (Kueue): waits for admission"
        elif sp.state is StageState.PREEMPTED:
            newest = newest_checkpoint(store, run_id, step)
            resume = f"step {newest}" if newest is not None else "the start (no checkpoint yet)"
            if sp.job.suspended:
                note = f"preempted {sp.preemptions}x: resumes from {resume} when admitted again"
            else:  # a pod was disrupted (eviction, node drain, scheduler preemption)
                why = sp.disruption or "pod disrupted, its replacement does not run yet"
                note = f"preempted {sp.preemptions}x ({why}): resumes from {resume} when a new pod runs"
        elif sp.blocked_by and sp.state in (StageState.PENDING, StageState.SKIPPED):
            note = "waits for " + ", ".join(dep for dep, _ in sp.blocked_by)
        rows.append(StepStatus(step, str(sp.state), duration, metrics, job=sp.job.name, note=note))
    for job, problem in p.foreign:
        rows.append(StepStatus(job.stage or "?", "foreign", job=job.name, note=problem))
    state = str(p.state) if p.state is not None else "pending"
    return RunStatus(run_id, state, tuple(rows), cluster=True, failed_stage=p.failed_stage)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _metrics(metrics: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items()) or "-"


def format_status(status: RunStatus) -> str:
    """A fixed-width table, one step per line, under a one-line run summary."""
    source = "cluster + store" if status.cluster else "store only"
    head = f"run {status.run_id}: {status.state}"
    if status.failed_stage:
        head += f" (failed at {status.failed_stage})"
    lines = [f"{head}   [{source}]"]
    header = ["STEP", "STATE", "DURATION", "METRICS"]
    if status.cluster:
        header.append("JOB")
    header.append("NOTE")
    table = [header]
    for s in status.steps:
        row = [s.step, s.state, _duration(s.duration_s), _metrics(s.metrics)]
        if status.cluster:
            row.append(s.job or "-")
        row.append(s.note)
        table.append(row)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)
