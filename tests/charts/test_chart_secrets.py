"""The chart refuses secrets in plain sight and resources the API server would refuse; t2s never echoes them."""

from __future__ import annotations

import pytest

from tests.charts.render import HelmError, helm_missing, render, render_text, stage_jobs

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


@pytest.fixture(scope="module", autouse=True)
def _helm_installed() -> None:
    problem = helm_missing()
    if problem:
        pytest.fail(problem)


def _fails(*set_values: str) -> str:
    with pytest.raises(HelmError) as exc:
        render_text(set_values=list(set_values))
    return str(exc.value)


@pytest.mark.parametrize("where", ["stageDefaults.env[0]", "stages.sft.env[0]", "controller.env[0]"])
@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "db_password", "OPENAI_API_KEY"])
def test_secret_named_env_with_a_literal_value_is_refused(where: str, name: str) -> None:
    err = _fails(f"{where}.name={name}", f"{where}.value={SECRET}")
    assert f"{where} ({name})" in err and "valueFrom.secretKeyRef" in err
    assert SECRET not in err


def test_secret_named_env_from_a_secret_and_plain_env_render() -> None:
    docs = render(set_values=["stageDefaults.env[0].name=HF_TOKEN",
                              "stageDefaults.env[0].valueFrom.secretKeyRef.name=hf",
                              "stageDefaults.env[0].valueFrom.secretKeyRef.key=token",
                              "stageDefaults.env[1].name=HF_HUB_OFFLINE", "stageDefaults.env[1].value=yes"])
    jobs = stage_jobs(docs)  # whole run: the Job specs live in the controller's spec ConfigMap
    assert jobs and all(any(e["name"] == "HF_TOKEN" and "valueFrom" in e
                            for e in j["spec"]["template"]["spec"]["containers"][0]["env"]) for j in jobs)


def test_endpoint_with_a_user_part_is_refused_without_echoing_it() -> None:
    err = _fails(f"runConfig.store.s3.endpoint=AKIAEXAMPLE:{SECRET}@minio.storage:9000")
    assert "user part" in err and SECRET not in err and "AKIAEXAMPLE" not in err


@pytest.mark.parametrize(("set_value", "where"), [
    ("stages.sft.resources.limits.memory=4Gi", "stages.sft.resources"),
    ("stageDefaults.resources.limits.memory=1Gi", "stages.prepare.resources"),
    ("controller.resources.limits.memory=100Mi", "controller.resources"),
    ("stages.rm.resources.limits.cpu=500m", "stages.rm.resources"),
])
def test_limits_below_requests_are_refused(set_value: str, where: str) -> None:
    err = _fails(set_value)
    assert where in err and "is below requests." in err


def test_equal_limits_and_requests_in_other_units_render() -> None:
    render(set_values=["stages.sft.resources.requests.memory=1024Mi", "stages.sft.resources.limits.memory=1Gi",
                       "stages.sft.resources.requests.cpu=500m", "stages.sft.resources.limits.cpu=0.5"])


def test_t2s_refuses_an_endpoint_with_a_user_part_without_echoing_it(tmp_path, capsys) -> None:
    from text2sql_core.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(f"store:\n  kind: s3\n  s3:\n    endpoint: 'AKIAEXAMPLE:{SECRET}@minio:9000'\n"
                      "    bucket: my-bucket\n")
    assert main(["config", "validate", str(config)]) == 2
    captured = capsys.readouterr()
    assert "user part" in captured.err
    assert SECRET not in captured.err + captured.out and "AKIAEXAMPLE" not in captured.err + captured.out


def test_rendered_run_config_with_small_floats_is_valid(tmp_path) -> None:
    """The ConfigMap's run.yaml, as Helm writes it (0.00001 becomes 1e-05), passes the strict loader."""
    from text2sql_core.config import load_run_config

    docs = render({"runConfig": {"stages": {"sft": {"learning_rate": 0.00001}}}})
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and "run.yaml" in d.get("data", {})]
    text = cm["data"]["run.yaml"]
    assert "1e-05" in text
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert load_run_config(path).stages.sft.learning_rate == 1e-05
