"""The stage contract: what every stage gets (a context) and what the runner guarantees around it.

A stage reads manifested artifacts of its upstream steps and writes files into ``ctx.output_dir``.
The runner publishes them with a manifest written last, so a step counts as done only once its
``_manifest.json`` exists. Re-running a step whose manifest has the same config hash is a no-op;
training stages resume from their newest complete checkpoint. One runner at a time: the step's
lease (``store.lease``) is held from before the stage runs until after it published.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .. import distributed
from ..config_base import StageConfigBase
from ..errors import BadInput
from ..graph import Step, get_step, steps_for
from ..logging import bind_context, get_logger
from ..store import ArtifactStore, open_store
from ..store.lease import StepLease
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


#: the stage kinds a WikiSQL run (``data.format: wikisql``) can run: the RL kinds and ``rm_data`` score SQL
#: on ``database/<db_id>/<db_id>.sqlite``, which WikiSQL's one file per split does not give
WIKISQL_KINDS = ("prepare", "sft", "predict", "evaluate")


@dataclass(frozen=True)
class Stage:
    """A stage kind: a name, its config model and ``run(ctx) -> metrics``."""

    name: str
    config_cls: type[StageConfigBase]
    run: Callable[[StageContext], dict[str, Any]]
    description: str = ""


def step_prefix(run_id: str, step: str) -> str:
    return f"runs/{run_id}/{step}"


def config_hash(step: Step, config: BaseModel, run_config: RunConfig, upstream: dict[str, Manifest],
                *, base_digest: str | None = None) -> str:
    """Hash of everything that determines a step's output: a change anywhere upstream changes it too.

    Inputs count by content (each upstream manifest's digest of sha256s), not only by their config
    hash, and so do the base weights (``base_digest``): republishing other bytes under the same
    name makes the step rerun instead of being skipped as already published.
    """
    doc = {
        "step": step.name,
        "kind": step.kind,
        "config": config.model_dump(mode="json"),
        "model": run_config.model.model_dump(mode="json"),
        "base_digest": base_digest,
        "data": run_config.data.model_dump(mode="json"),
        "seed": run_config.seed,
        "upstream": {name: [m.config_hash, m.digest] for name, m in sorted(upstream.items())},
    }
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


class CheckpointStore:
    """Checkpoints of one step, each published atomically under ``<step>/_checkpoints/<NNNNNNNN>/``.

    Only checkpoints written under the current config hash are resumed: a changed config starts over.
    Under torchrun only global rank 0 publishes (``save`` is a no-op elsewhere) and every rank
    resumes the one checkpoint rank 0 found.
    """

    def __init__(self, store: ArtifactStore, prefix: str, local_root: Path, *, run_id: str, step: Step,
                 config_hash: str, keep_last: int = 2, guard: Callable[[], None] | None = None) -> None:
        self._guard = guard  # raises when this runner lost the step's lease: it must not publish
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
        if not distributed.world().is_main:
            return
        if self._guard is not None:
            self._guard()
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
        complete = dict(self._complete())
        newest = distributed.broadcast_object(max(complete) if complete else None)
        if newest is None:
            return None
        if newest not in complete:  # rank 0 saw a checkpoint this rank's store listing does not show
            raise BadInput(f"checkpoint {newest} of {self._prefix} is not visible on rank "
                           f"{distributed.world().rank}: every rank must see the same store", uri=self._prefix)
        n, manifest = newest, complete[newest]
        local = self._local_root / f"{n:08d}"
        fetch(self._store, f"{self._prefix}/{n:08d}", local, manifest=manifest)
        self._log.info("resuming from checkpoint", checkpoint_step=n)
        return n, local

    def clear(self) -> int:
        removed = self._store.delete_prefix(self._prefix + "/") if distributed.world().is_main else 0
        distributed.barrier()
        return removed


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
        """Report live training progress: logs (throttled), Prometheus gauges, ``progress.jsonl``.

        Only global rank 0 reports: the values a stage passes are global ones, logged once.
        """
        if not distributed.world().is_main:
            return
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


class _RankLease:
    """The lease of a torchrun rank other than 0: rank 0 holds the step's lease for the whole launch."""

    def release(self) -> None:
        return None

    def check(self) -> None:
        return None

    def __enter__(self) -> _RankLease:  # noqa: PYI034 - never subclassed
        return self

    def __exit__(self, *exc: object) -> None:
        return None


#: seconds a SIGTERM'd runner gets to unwind before it releases its lease and exits hard
TERM_GRACE_S = 20.0


@contextmanager
def _sigterm_exits(release: Callable[[], None] | None = None) -> Iterator[None]:
    """SIGTERM (pod deletion, the pipeline's death) unwinds like an exception: the lease is released.

    A ``SystemExit`` raised by the handler can be swallowed when the signal lands inside a finalizer
    (``__del__`` and GC callbacks ignore exceptions), and the runner would go on training as an orphan.
    So the handler also arms a timer: if the process is still alive ``T2S_TERM_GRACE_S`` (default
    :data:`TERM_GRACE_S`) seconds later, it releases the lease and exits with 143 without further unwinding.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _hard_exit() -> None:
        if release is not None:
            release()
        os._exit(128 + signal.SIGTERM)

    def _exit(signum: int, _frame: object) -> None:
        if not getattr(_exit, "armed", False):
            _exit.armed = True  # type: ignore[attr-defined]
            timer = threading.Timer(float(os.environ.get("T2S_TERM_GRACE_S", TERM_GRACE_S)), _hard_exit)
            timer.daemon = True
            timer.start()
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    if run_config.data.format == "wikisql" and step.kind not in WIKISQL_KINDS:
        raise BadInput(f"step {step.name!r} ({step.kind}) does not run on WikiSQL data: its execution rewards read "
                       "one SQLite file per database (Spider's layout); a WikiSQL run trains and evaluates "
                       f"{', '.join(WIKISQL_KINDS)} (e.g. `t2s pipeline run --until evaluate_sft`)",
                       field="data.format", stage=step.name)
    cfg = run_config.stage_config(step.kind)
    world = distributed.init()
    bind_context(run=run_config.run_id, stage=step.name, **({"rank": world.rank} if world.distributed else {}))
    log = get_logger()
    store = open_store(run_config.store, base_dir=base_dir)

    upstream: dict[str, Manifest] = {}
    for name in step.inputs:
        m = read_manifest(store, step_prefix(run_config.run_id, name))
        if m is None:
            raise BadInput(f"upstream step {name!r} has not published {step_prefix(run_config.run_id, name)}/"
                           f"_manifest.json in {store.uri}; run it first", stage=step.name)
        upstream[name] = m

    from ..models.loading import base_digest

    digest = config_hash(step, cfg, run_config, upstream, base_digest=base_digest(run_config.model, store))
    prefix = step_prefix(run_config.run_id, step.name)
    existing = read_manifest(store, prefix)
    done = existing is not None and existing.config_hash == digest and not force
    published = distributed.broadcast_object(existing if done else None)  # rank 0 decides for all ranks
    if published is not None:
        log.info("step already published with the same config hash; skipping (use --force to rerun)",
                 config_hash=digest[:12])
        return StepOutcome(step.name, True, published, 0.0)

    # Under torchrun every rank runs this function: the launch holds one lease, through global rank 0.
    lease: StepLease | _RankLease = (
        StepLease(store, prefix, ttl_s=run_config.store.lease_ttl_s, heartbeat_s=run_config.store.lease_heartbeat_s)
        if world.is_main else _RankLease())
    with _sigterm_exits(lease.release), lease:
        existing = read_manifest(store, prefix)  # another runner may have published while we waited
        meanwhile = existing is not None and existing.config_hash == digest and not force
        published = distributed.broadcast_object(existing if meanwhile else None)  # rank 0 decides for all
        if published is not None:
            log.info("step published by another runner meanwhile; skipping", config_hash=digest[:12])
            return StepOutcome(step.name, True, published, 0.0)
        root = Path(run_config.workdir)
        if not root.is_absolute():
            root = (base_dir or Path.cwd()) / root
        workdir = root / run_config.run_id / step.name
        if world.rank:  # ranks sharing a node never share a scratch directory (nor rmtree rank 0's output)
            workdir = workdir / "ranks" / str(world.rank)
        output_dir = workdir / "output"
        if output_dir.exists():
            shutil.rmtree(output_dir)
        output_dir.mkdir(parents=True)
        checkpoints = CheckpointStore(store, prefix, workdir / "checkpoints", run_id=run_config.run_id,
                                      step=step, config_hash=digest, guard=lease.check)
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
        lease.check()
        manifest: Manifest | None = None
        if world.is_main:  # one publisher; the other ranks wait for its manifest (a barrier with a timeout)
            manifest = publish(store, prefix, output_dir, run_id=run_config.run_id, step=step.name, kind=step.kind,
                               config_hash=digest, metrics=metrics, started_at=started,
                               extra={"inputs": {n: {"config_hash": m.config_hash, "digest": m.digest}
                                                 for n, m in upstream.items()}})
            log.info("step published", seconds=round(seconds, 2), files=len(manifest.files),
                     **({"ranks": world.size} if world.distributed else {}),
                     **{k: v for k, v in metrics.items() if isinstance(v, int | float) and k != "seconds"})
        manifest = distributed.wait_for_main(manifest)
        assert manifest is not None
    return StepOutcome(step.name, False, manifest, seconds)
