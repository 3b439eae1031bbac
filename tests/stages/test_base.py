"""The stage contract: publish with a manifest, skip on the same config hash, force, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from text2sql_core.config import RunConfig
from text2sql_core.errors import BadInput
from text2sql_core.stages.base import Stage, run_step, step_prefix
from text2sql_core.store import open_store
from text2sql_core.store.manifest import read_manifest


def _make_registry(calls: list[str]) -> dict[str, Stage]:
    def run_prepare(ctx):
        calls.append(ctx.step.name)
        (ctx.output_dir / "data.txt").write_text(f"prepared by {ctx.run_id}\n")
        return {"rows": 3}

    def run_sft(ctx):
        calls.append(ctx.step.name)
        data = ctx.input("prepare") / "data.txt"
        resumed = ctx.checkpoints.latest()
        start = resumed[0] if resumed else 0
        for step in range(start + 1, 4):
            ckpt = ctx.workdir / f"ck{step}"
            ckpt.mkdir(parents=True, exist_ok=True)
            (ckpt / "state.json").write_text(json.dumps({"step": step}))
            ctx.checkpoints.save(step, ckpt)
            ctx.progress(step=step, total=3, loss=1.0 / step)
        (ctx.output_dir / "model.txt").write_text(data.read_text() + f"resumed_from={start}\n")
        return {"resumed_from": start}

    # the real kinds' config models, with test run functions that exercise the contract
    from text2sql_core.stages.prepare import PrepareConfig
    from text2sql_core.stages.sft import SFTConfig

    return {"prepare": Stage("prepare", PrepareConfig, run_prepare), "sft": Stage("sft", SFTConfig, run_sft)}


def _cfg(tmp_path: Path, **upd) -> RunConfig:
    return RunConfig.model_validate({"run_id": "t1", "workdir": str(tmp_path / "work"),
                                     "store": {"kind": "local", "local": {"path": str(tmp_path / "store")}}, **upd})


def test_publish_then_skip_then_force(tmp_path: Path) -> None:
    calls: list[str] = []
    reg = _make_registry(calls)
    cfg = _cfg(tmp_path)
    first = run_step(cfg, "prepare", registry=reg)
    assert not first.skipped and calls == ["prepare"]
    store = open_store(cfg.store)
    m = read_manifest(store, step_prefix("t1", "prepare"))
    assert m is not None and [f.path for f in m.files] == ["data.txt"] and m.metrics["rows"] == 3
    again = run_step(cfg, "prepare", registry=reg)
    assert again.skipped and calls == ["prepare"]
    forced = run_step(cfg, "prepare", registry=reg, force=True)
    assert not forced.skipped and calls == ["prepare", "prepare"]


def test_missing_upstream_is_bad_input(tmp_path: Path) -> None:
    reg = _make_registry([])
    cfg = _cfg(tmp_path)
    with pytest.raises(BadInput, match="upstream step 'prepare' has not published"):
        run_step(cfg, "sft", registry=reg)


def test_checkpoints_resume_and_prune(tmp_path: Path) -> None:
    calls: list[str] = []
    reg = _make_registry(calls)
    cfg = _cfg(tmp_path)
    run_step(cfg, "prepare", registry=reg)
    out = run_step(cfg, "sft", registry=reg)
    assert out.manifest.metrics["resumed_from"] == 0
    store = open_store(cfg.store)
    kept = sorted({i.key.split("/")[4] for i in store.list("runs/t1/sft/_checkpoints/")})
    assert kept == ["00000002", "00000003"]  # keep_last=2
    # a rerun with --force drops the checkpoints, so it starts from scratch again
    out = run_step(cfg, "sft", registry=reg, force=True)
    assert out.manifest.metrics["resumed_from"] == 0
    progress = (tmp_path / "work" / "t1" / "sft" / "progress.jsonl").read_text().splitlines()
    assert json.loads(progress[-1])["step"] == 3


def test_changed_upstream_changes_hash(tmp_path: Path) -> None:
    reg = _make_registry([])
    cfg = _cfg(tmp_path)
    run_step(cfg, "prepare", registry=reg)
    a = run_step(cfg, "sft", registry=reg).manifest.config_hash
    run_step(cfg, "prepare", registry=reg, force=True)  # same hash: same config
    assert run_step(cfg, "sft", registry=reg).skipped
    cfg2 = _cfg(tmp_path, seed=7)
    run_step(cfg2, "prepare", registry=reg)
    b = run_step(cfg2, "sft", registry=reg).manifest.config_hash
    assert a != b
