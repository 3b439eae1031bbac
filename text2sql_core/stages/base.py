"""The stage contract: what every stage gets (a context) and what the runner guarantees around it.

A stage reads manifested artifacts of its upstream steps and writes files into ``ctx.output_dir``.
The runner publishes them with a manifest written last, so a step counts as done only once its
``_manifest.json`` exists. Re-running a step whose manifest has the same config hash is a no-op;
training stages resume from their newest complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ..config_base import StageConfigBase
from ..errors import BadInput
from ..graph import Step, get_step, steps_for
from ..logging import bind_context, get_logger
from ..store import ArtifactStore, open_store
from ..store.manifest import Manifest, fetch, publish, read_manifest
from .progress import ProgressReporter

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = [
    "CheckpointStore",
    "Stage",
    "StageConfigBase",
    "StageContext",
    "StepOutcome",
    "config_hash",
    "run_step",
    "step_prefix",
]


@dataclass(frozen=True)
class Stage:
    """A stage kind: a name, its config model and ``run(ctx) -> metrics``."""

    name: str
    config_cls: type[StageConfigBase]
    run: Callable[[StageContext], dict[str, Any]]
    description: str = ""


def step_prefix(run_id: str, step: str) -> str:
    return f"runs/{run_id}/{step}"


def config_hash(step: Step, config: BaseModel, run_config: RunConfig, upstream: dict[str, Manifest]) -> str:
    """Hash of everything that determines a step's output: a change anywhere upstream changes it too."""
    doc = {
        "step": step.name,
        "kind": step.kind,
        "config": config.model_dump(mode="json"),
        "model": run_config.model.model_dump(mode="json"),
        "data": run_config.data.model_dump(mode="json"),
        "seed": run_config.seed,
        "upstream": {name: m.config_hash for name, m in sorted(upstream.items())},
    }
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


class CheckpointStore:
    """Checkpoints of one step, each published atomically under ``<step>/_checkpoints/<NNNNNNNN>/``.

    Only checkpoints written under the current config hash are resumed: a changed config starts over.
    """

    def __init__(self, store: ArtifactStore, prefix: str, local_root: Path, *, run_id: str, step: Step,
                 config_hash: str, keep_last: int = 2) -> None:
        self._store = store
        self._prefix = f"{prefix}/_checkpoints"
        self._local_root = local_root
        self._run_id = run_id
        self._step = step
        self._hash = config_hash
        self._keep_last = keep_last
        self._log = get_logger()

    def _complete(self) -> list[tuple[int, Manifest]]:
        found: dict[int, Manifest] = {}
        for info in self._store.list(self._prefix + "/"):
            rel = info.key[len(self._prefix) + 1:]
            parts = rel.split("/")
            if len(parts) == 2 and parts[1] == "_manifest.json" and parts[0].isdigit():
                n = int(parts[0])
                m = read_manifest(self._store, f"{self._prefix}/{parts[0]}")
                if m is not None and m.config_hash == self._hash:
                    found[n] = m
        return sorted(found.items())

    def save(self, step: int, local_dir: Path, *, metrics: dict[str, Any] | None = None) -> None:
        """Publish ``local_dir`` as the checkpoint of training step ``step``, then prune old ones."""
        started = datetime.now(UTC)
        publish(self._store, f"{self._prefix}/{step:08d}", Path(local_dir), run_id=self._run_id,
                step=self._step.name, kind=self._step.kind, config_hash=self._hash,
                metrics={"step": step, **(metrics or {})}, started_at=started)
        self._log.info("checkpoint published", checkpoint_step=step)
        complete = self._complete()
        for n, _ in complete[: max(0, len(complete) - self._keep_last)]:
            self._store.delete_prefix(f"{self._prefix}/{n:08d}/")

    def latest(self) -> tuple[int, Path] | None:
        """Download and verify the newest complete checkpoint; ``None`` when there is none."""
        complete = self._complete()
        if not complete:
            return None
        n, manifest = complete[-1]
        local = self._local_root / f"{n:08d}"
        fetch(self._store, f"{self._prefix}/{n:08d}", local, manifest=manifest)
        self._log.info("resuming from checkpoint", checkpoint_step=n)
        return n, local

    def clear(self) -> int:
        return self._store.delete_prefix(self._prefix + "/")


@dataclass
class StageContext:
    """What a stage sees: its config, its upstream artifacts, where to write, how to checkpoint."""

    run_id: str
    step: Step
    config: Any
    run_config: RunConfig
    store: ArtifactStore
    workdir: Path
    output_dir: Path
    checkpoints: CheckpointStore
    upstream: dict[str, Manifest]
    log: Any
    reporter: ProgressReporter
    _inputs: dict[str, Path] = field(default_factory=dict)

    def input(self, step_name: str) -> Path:
        """Local, checksum-verified copy of an upstream step's published files (downloaded once)."""
        if step_name not in self.upstream:
            raise BadInput(f"step {self.step.name!r} does not read step {step_name!r}; "
                           f"its inputs are {list(self.step.inputs)}", stage=self.step.name)
        if step_name not in self._inputs:
            local = self.workdir / "inputs" / step_name
            fetch(self.store, step_prefix(self.run_id, step_name), local, manifest=self.upstream[step_name])
            self._inputs[step_name] = local
        return self._inputs[step_name]

    def input_manifest(self, step_name: str) -> Manifest:
        return self.upstream[step_name]

    def progress(self, *, step: int | None = None, total: int | None = None, **metrics: float) -> None:
        """Report live training progress: logs (throttled), Prometheus gauges, ``progress.jsonl``."""
        self.reporter.report(step=step, total=total, **metrics)


@dataclass(frozen=True)
class StepOutcome:
    step: str
    skipped: bool
    manifest: Manifest
    seconds: float


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:  # numpy/torch only when a stage already pulled them in
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover - numpy ships with torch
        pass


def run_step(run_config: RunConfig, step_name: str, *, force: bool = False, base_dir: Path | None = None,
             registry: dict[str, Stage] | None = None) -> StepOutcome:
    """Run one step of a run: check inputs, skip when already published, run the stage, publish.

    Raises ``BadInput`` (exit 2) for a missing upstream artifact or bad config; anything else escapes.
    """
    from . import load_registry

    step = get_step(step_name, steps_for(run_config))
    stages = registry if registry is not None else load_registry()
    stage = stages.get(step.kind)
    if stage is None:
        raise BadInput(f"no stage kind {step.kind!r} is registered", stage=step.name)
    cfg = run_config.stage_config(step.kind)
    bind_context(run=run_config.run_id, stage=step.name)
    log = get_logger()
    store = open_store(run_config.store, base_dir=base_dir)

    upstream: dict[str, Manifest] = {}
    for name in step.inputs:
        m = read_manifest(store, step_prefix(run_config.run_id, name))
        if m is None:
            raise BadInput(f"upstream step {name!r} has not published {step_prefix(run_config.run_id, name)}/"
                           f"_manifest.json in {store.uri}; run it first", stage=step.name)
        upstream[name] = m

    digest = config_hash(step, cfg, run_config, upstream)
    prefix = step_prefix(run_config.run_id, step.name)
    existing = read_manifest(store, prefix)
    if existing is not None and existing.config_hash == digest and not force:
        log.info("step already published with the same config hash; skipping (use --force to rerun)",
                 config_hash=digest[:12])
        return StepOutcome(step.name, True, existing, 0.0)

    root = Path(run_config.workdir)
    if not root.is_absolute():
        root = (base_dir or Path.cwd()) / root
    workdir = root / run_config.run_id / step.name
    output_dir = workdir / "output"
    if output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True)
    checkpoints = CheckpointStore(store, prefix, workdir / "checkpoints", run_id=run_config.run_id,
                                  step=step, config_hash=digest)
    if force:
        checkpoints.clear()
    reporter = ProgressReporter(workdir / "progress.jsonl", log=log)
    ctx = StageContext(run_id=run_config.run_id, step=step, config=cfg, run_config=run_config, store=store,
                       workdir=workdir, output_dir=output_dir, checkpoints=checkpoints, upstream=upstream,
                       log=log, reporter=reporter)
    _seed_everything(run_config.seed)
    started = datetime.now(UTC)
    t0 = time.monotonic()
    log.info("step started", kind=step.kind, config_hash=digest[:12], store=store.uri)
    metrics = stage.run(ctx) or {}
    seconds = time.monotonic() - t0
    metrics = {**metrics, "seconds": round(seconds, 3)}
    manifest = publish(store, prefix, output_dir, run_id=run_config.run_id, step=step.name, kind=step.kind,
                       config_hash=digest, metrics=metrics, started_at=started,
                       extra={"inputs": {n: m.config_hash for n, m in upstream.items()}})
    log.info("step published", seconds=round(seconds, 2), files=len(manifest.files),
             **{k: v for k, v in metrics.items() if isinstance(v, int | float) and k != "seconds"})
    return StepOutcome(step.name, False, manifest, seconds)
