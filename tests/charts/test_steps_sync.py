"""The chart's run graphs come from the stage registry: generated, committed, and rendered as such."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.charts.render import CHART, REPO_ROOT, HelmError, helm_missing, render, stage_jobs
from text2sql_core.graph import all_step_names, build_steps
from text2sql_core.registry import RL_KINDS, config_class, get_kind


@pytest.fixture(scope="module", autouse=True)
def _helm_installed() -> None:
    problem = helm_missing()
    if problem:
        pytest.fail(problem)


def test_generated_steps_template_is_up_to_date() -> None:
    proc = subprocess.run([sys.executable, str(CHART / "hack" / "gen-steps.py"), "--check"],
                          check=False, capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr


def _variants() -> list[tuple[str, dict, object]]:
    out = []
    for name in RL_KINDS:
        out.append((name, {}, None))
        if get_kind(name).extra_inputs is not None:
            settings = {"rewards": [{"name": "rm"}]}
            out.append((name, {name: settings}, config_class(name).model_validate(settings)))
    return out


@pytest.mark.parametrize(("algorithm", "stages", "settings"), _variants(), ids=lambda v: str(v)[:20])
def test_whole_run_renders_the_graph_of_each_algorithm(algorithm: str, stages: dict, settings: object) -> None:
    run_config = {"rl": {"algorithm": algorithm}}
    if stages:
        run_config["stages"] = stages
    jobs = stage_jobs(render({"runConfig": run_config}))
    rendered = [(j["metadata"]["labels"]["text2sql-rlhf.dev/stage"],
                 j["metadata"]["annotations"]["text2sql-rlhf.dev/kind"],
                 j["metadata"]["annotations"]["text2sql-rlhf.dev/depends-on"]) for j in jobs]
    expected = [(s.name, s.kind, ",".join(s.inputs)) for s in build_steps(algorithm, settings)]
    assert sorted(rendered) == sorted(expected)


def test_unknown_algorithm_fails_with_the_reason() -> None:
    with pytest.raises(HelmError, match="must be one of|not an RL algorithm"):
        render({"runConfig": {"rl": {"algorithm": "a2c"}}})


def test_values_schema_names_every_step() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["stage"]["enum"] == ["", *all_step_names()]
    assert list(schema["properties"]["stages"]["properties"]) == all_step_names()


def test_single_stage_outside_the_algorithms_graph_fails_with_the_reason() -> None:
    with pytest.raises(HelmError, match="not a step of this run's graph"):
        render({"runConfig": {"rl": {"algorithm": "grpo"}}}, set_values=["stage=rm"])


def test_one_process_stages_are_never_launched_under_torchrun() -> None:
    from tests.charts.render import stage_jobs

    for job in stage_jobs(render({"stageDefaults": {"gpus": 1}})):
        kind = job["metadata"]["annotations"]["text2sql-rlhf.dev/kind"]
        command = job["spec"]["template"]["spec"]["containers"][0]["command"]
        if kind == "evaluate":
            assert "torchrun" not in command
    with pytest.raises(HelmError, match="stages.evaluate_rl: the evaluate stage runs in one process"):
        render({"stages": {"evaluate_rl": {"gpus": 2}}})
    with pytest.raises(HelmError, match="stages.export: the export stage runs in one process"):
        render({"stages": {"export": {"nodes": 2, "gpus": 1}}})
    for algorithm in ("grpo", "dpo"):  # data parallel like ppo: one process per GPU
        jobs = stage_jobs(render({"runConfig": {"rl": {"algorithm": algorithm}}, "stages": {"rl": {"gpus": 4}}}))
        rl = next(j for j in jobs if j["metadata"]["annotations"]["text2sql-rlhf.dev/kind"] == algorithm)
        command = rl["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[:3] == ["t2s", "torchrun", "--nproc-per-node=4"], command
