"""Content lineage and one runner per step, through ``run_step``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from text2sql_core.config import RunConfig
from text2sql_core.stages.base import Stage, run_step
from text2sql_core.store import open_store
from text2sql_core.store.manifest import publish


def _registry(calls: list[str]) -> dict[str, Stage]:
    from text2sql_core.stages.prepare import PrepareConfig
    from text2sql_core.stages.sft import SFTConfig

    def run_prepare(ctx):
        calls.append(ctx.step.name)
        (ctx.output_dir / "data.txt").write_text("rows\n")
        return {}

    def run_sft(ctx):
        calls.append(ctx.step.name)
        (ctx.output_dir / "model.txt").write_text(ctx.input("prepare").joinpath("data.txt").read_text())
        return {}

    return {"prepare": Stage("prepare", PrepareConfig, run_prepare), "sft": Stage("sft", SFTConfig, run_sft)}


def _cfg(tmp_path: Path, **upd) -> RunConfig:
    return RunConfig.model_validate({"run_id": "t1", "workdir": str(tmp_path / "work"),
                                     "store": {"kind": "local", "local": {"path": str(tmp_path / "store")}}, **upd})


def _upload(store, key: str, src: Path) -> None:
    publish(store, key, src, run_id="upload", step="upload", kind="model", config_hash="0" * 64, metrics={},
            started_at=datetime.now(UTC))


def test_reuploaded_base_weights_rerun_the_step(tmp_path: Path) -> None:
    """Same ``store://models/<name>``, other bytes: the step is not skipped as already published."""
    calls: list[str] = []
    reg = _registry(calls)
    cfg = _cfg(tmp_path, model={"path": "store://models/base"})
    store = open_store(cfg.store)
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(b"weights-1")
    _upload(store, "models/base", src)
    run_step(cfg, "prepare", registry=reg)
    first = run_step(cfg, "sft", registry=reg)
    assert run_step(cfg, "sft", registry=reg).skipped
    (src / "model.safetensors").write_bytes(b"weights-2")  # same size, other content
    _upload(store, "models/base", src)
    again = run_step(cfg, "sft", registry=reg)
    assert not again.skipped and again.manifest.config_hash != first.manifest.config_hash
    assert calls == ["prepare", "sft", "sft"]


def test_republished_upstream_with_same_config_reruns_downstream(tmp_path: Path) -> None:
    """An upstream output replaced by other bytes (same config hash) changes the downstream hash."""
    calls: list[str] = []
    reg = _registry(calls)
    cfg = _cfg(tmp_path)
    run_step(cfg, "prepare", registry=reg)
    run_step(cfg, "sft", registry=reg)
    store = open_store(cfg.store)
    from text2sql_core.store.manifest import read_manifest

    m = read_manifest(store, "runs/t1/prepare")
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.txt").write_text("other rows\n")
    publish(store, "runs/t1/prepare", other, run_id="t1", step="prepare", kind="prepare",
            config_hash=m.config_hash, metrics={}, started_at=datetime.now(UTC))
    assert not run_step(cfg, "sft", registry=reg).skipped


def test_lease_is_held_while_the_stage_runs_and_released_after(tmp_path: Path) -> None:
    from text2sql_core.store.lease import LEASE_NAME

    seen: list[bool] = []
    reg = _registry([])
    store = open_store(_cfg(tmp_path).store)
    inner = reg["prepare"].run

    def run_prepare(ctx):
        seen.append(ctx.store.exists(f"runs/t1/prepare/{LEASE_NAME}"))
        return inner(ctx)

    reg["prepare"] = Stage("prepare", reg["prepare"].config_cls, run_prepare)
    run_step(_cfg(tmp_path), "prepare", registry=reg)
    assert seen == [True] and not store.exists(f"runs/t1/prepare/{LEASE_NAME}")


def test_second_runner_of_a_live_step_exits_1_naming_the_holder(tmp_path: Path) -> None:
    import subprocess
    import sys

    import yaml

    from text2sql_core.store.lease import StepLease

    cfg = _cfg(tmp_path)
    run_step(cfg, "prepare", registry=_registry([]))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    store = open_store(cfg.store)
    with StepLease(store, "runs/t1/sft", ttl_s=60, heartbeat_s=5, owner="pod first-runner"):
        r = subprocess.run([sys.executable, "-m", "text2sql_core.cli", "stage", "run", "sft", "--config",
                            str(config)], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "another runner holds this step: pod first-runner" in r.stderr
    assert store.list("runs/t1/sft") == []  # nothing published, no lease left


_SWALLOWING_RUNNER = r"""
import sys, time
from pathlib import Path
from text2sql_core.config import RunConfig
from text2sql_core.stages.base import Stage, run_step
from text2sql_core.stages.prepare import PrepareConfig

def run_prepare(ctx):
    Path(sys.argv[2]).write_text("running")
    while True:  # a SystemExit swallowed where a finalizer caught it: the step would go on as an orphan
        try:
            time.sleep(0.05)
        except SystemExit:
            pass

cfg = RunConfig.model_validate_json(Path(sys.argv[1]).read_text())
run_step(cfg, "prepare", registry={"prepare": Stage("prepare", PrepareConfig, run_prepare)})
"""


def test_sigterm_ends_a_runner_that_swallows_the_exit_and_frees_the_lease(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from text2sql_core.store.lease import LEASE_NAME

    cfg = _cfg(tmp_path)
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    started = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", _SWALLOWING_RUNNER, str(tmp_path / "cfg.json"), str(started)],
                            env={**os.environ, "T2S_TERM_GRACE_S": "1"})
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the runner never started its stage"
            time.sleep(0.05)
        store = open_store(cfg.store)
        assert store.exists(f"runs/t1/prepare/{LEASE_NAME}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert not store.exists(f"runs/t1/prepare/{LEASE_NAME}"), "the hard exit left the lease behind"
