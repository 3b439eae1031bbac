"""Cached runs with a reward model: an SFT run plus ``rm_data`` and ``rm`` published.

Built once per test session (shared by xdist workers like ``tests/training_fixtures.py``):

- ``rm_run``: on the under-trained policy, the reward model (and critic) PPO starts from;
- ``rm_well_run``: on the well-trained policy, the reward model whose held-out accuracy is tested.

Import a fixture into a test module::

    from tests.stages.rl_runs import rm_run  # noqa: F401  (a fixture)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.training_fixtures import _cache_root, _once

#: pair mining on a slice of the demo's training prompts (k samples each from the under-trained policy,
#: decoded as predict and PPO decode: values copied from the question)
RM_DATA_SETTINGS: dict[str, Any] = {"limit": 240, "num_candidates": 4, "max_new_tokens": 64, "batch_size": 16,
                                    "eval_fraction": 0.2, "copy_values": True}
#: reward-model training on the under-trained policy's pairs (the critic PPO starts from)
RM_SETTINGS: dict[str, Any] = {"max_steps": 120, "batch_size": 16, "learning_rate": 2e-3, "eval_steps": 40,
                               "save_steps": 60, "logging_steps": 10}
#: pairs of the well-trained policy for the accuracy test: half the demo's training prompts; where the
#: policy makes no wrong sample (about 9 in 10 samples are right), verified perturbations of gold
RM_DATA_WELL_SETTINGS: dict[str, Any] = {**RM_DATA_SETTINGS, "limit": 1200}
#: the reward model of the accuracy test (held-out pairwise accuracy 0.91 at 600 steps; a 400-step schedule gave 0.83)
RM_WELL_SETTINGS: dict[str, Any] = {"max_steps": 600, "batch_size": 16, "learning_rate": 1e-3, "eval_steps": 100,
                                    "save_steps": 200, "logging_steps": 10}



@dataclass(frozen=True)
class RLRun:
    """A cached run with prepare, sft, rm_data and rm published (read-only: clone it to run more steps)."""

    run_id: str
    store_root: Path
    run_config: Any
    metrics: dict[str, Any]

    def step_dir(self, step: str) -> Path:
        return self.store_root / "runs" / self.run_id / step

    def clone(self, dest: Path, *, stages: dict[str, Any] | None = None) -> Any:
        """A private copy of the published steps under ``dest`` and the RunConfig that points at it."""
        from text2sql_core.config import RunConfig

        for step in ("prepare", "sft", "rm_data", "rm"):
            shutil.copytree(self.step_dir(step), Path(dest) / "store" / "runs" / self.run_id / step,
                            ignore=shutil.ignore_patterns("_checkpoints"))
        doc = self.run_config.model_dump(mode="json")
        doc["store"] = {"kind": "local", "local": {"path": str(Path(dest) / "store")}}
        doc["workdir"] = str(Path(dest) / "work")
        for kind, values in (stages or {}).items():
            doc["stages"][kind] = {**doc["stages"].get(kind, {}), **values}
        return RunConfig.model_validate(doc)


def _rm_fixture(tmp_path_factory: pytest.TempPathFactory, base, name: str, rm_data: dict[str, Any],
                rm: dict[str, Any]) -> RLRun:
    from text2sql_core.config import RunConfig
    from text2sql_core.stages.base import run_step

    root = _cache_root(tmp_path_factory)

    def build(d: Path) -> dict[str, Any]:
        cfg = base.clone(d, stages={"rm_data": rm_data, "rm": rm})
        (d / "run_config.json").write_text(cfg.model_dump_json())
        mined = run_step(cfg, "rm_data")
        trained = run_step(cfg, "rm")
        shutil.rmtree(d / "work", ignore_errors=True)
        return {"rm_data": mined.manifest.metrics, "rm": trained.manifest.metrics}

    info = _once(root, name, build)
    d = root / name
    cfg = RunConfig.model_validate(json.loads((d / "run_config.json").read_text()))
    return RLRun(run_id=cfg.run_id, store_root=d / "store", run_config=cfg, metrics=info)


@pytest.fixture(scope="session")
def rm_run(tmp_path_factory: pytest.TempPathFactory, sft_undertrained) -> RLRun:
    """The under-trained SFT run with pairs mined and the reward model trained (cached per session): PPO's start."""
    return _rm_fixture(tmp_path_factory, sft_undertrained, "rm-under", RM_DATA_SETTINGS, RM_SETTINGS)


@pytest.fixture(scope="session")
def rm_well_run(tmp_path_factory: pytest.TempPathFactory, sft_trained) -> RLRun:
    """The well-trained SFT run with pairs mined and the reward model trained (cached per session)."""
    return _rm_fixture(tmp_path_factory, sft_trained, "rm-well", RM_DATA_WELL_SETTINGS, RM_WELL_SETTINGS)
