"""The chart's Grafana dashboard and PrometheusRule, checked with Prometheus' own tools: ``promtool
check rules`` (syntax of every alert and of every dashboard query) and ``promtool test rules`` (each
alert fires on the series that should fire it, and only then)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.charts.monitoring import DASHBOARD, dashboard_queries, prometheus_missing, promtool, rules_file
from tests.charts.render import helm_missing, render

RUN = "r1"
VALUES = {"runId": RUN, "metrics": {"grafanaDashboard": {"enabled": True},
                                    "prometheusRule": {"enabled": True, "stalledMinutes": 10, "waitingMinutes": 15}}}


@pytest.fixture(scope="module", autouse=True)
def _tools_installed() -> None:
    problem = helm_missing() or prometheus_missing()
    if problem:
        pytest.fail(problem)


@pytest.fixture(scope="module")
def documents() -> list[dict]:
    return render(VALUES, namespace="ml")


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], check=False, capture_output=True, text=True, cwd=cwd, timeout=60)


def test_rules_pass_promtool_check(documents, tmp_path) -> None:
    path = rules_file(documents, tmp_path / "rules.yaml")
    proc = _promtool("check", "rules", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 4 rules found" in proc.stdout
    alerts = [r["alert"] for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]
    assert alerts == ["StageFailed", "RunFailed", "StageStalled", "StageWaitingTooLong"]


def test_promtool_check_catches_a_broken_rule(documents, tmp_path) -> None:
    """The check above is not vacuous."""
    path = rules_file(documents, tmp_path / "rules.yaml")
    path.write_text(path.read_text().replace("== 1", "== == 1", 1))
    assert _promtool("check", "rules", str(path), cwd=tmp_path).returncode != 0


def _series(state_of: str, values: str, **labels: str) -> dict:
    base = {"namespace": "ml", "run": RUN, "pod": "t2s-controller-0", **labels}
    body = ",".join(f'{k}="{v}"' for k, v in base.items())
    return {"series": f"{state_of}{{{body}}}", "values": values}


def _stalled(stage: str) -> dict:
    return {"exp_labels": {"severity": "warning", "namespace": "ml", "run": RUN, "stage": stage},
            "exp_annotations": {
                "summary": f"Stage {stage} of run {RUN} made no progress for 10 minutes",
                "description": "Its Job runs but its training step has not moved (or it reports none): a hung "
                               "rendezvous, a stuck data load or a dead GPU."}}


def test_alerts_fire_when_they_should_and_only_then(documents, tmp_path) -> None:
    rules_file(documents, tmp_path / "rules.yaml")
    running = "t2s_stage_state"
    tests = [{
        "interval": "1m",
        "input_series": [
            # sft fails at minute 3; its run with it; another run's failure is not this release's alert
            _series(running, "0 0 0 1 1 1", stage="sft", state="failed"),
            _series("t2s_run_state", "0 0 0 1 1 1", state="failed"),
            _series(running, "1 1 1 1 1 1", stage="rm", state="failed", run="r2"),
            # rl runs for 40 minutes; its step moves for 15 minutes, then stops
            _series(running, "1x40", stage="rl", state="running"),
            _series("t2s_stage_duration_seconds", "0+60x40", stage="rl"),
            _series("t2s_train_step", "0+1x15 15x25", stage="rl", pod="rl-0"),
            # rm_data runs for 40 minutes without reporting any step: stalled too, once 10 minutes have passed
            _series(running, "1x40", stage="rm_data", state="running"),
            _series("t2s_stage_duration_seconds", "0+60x40", stage="rm_data"),
            # predict_rl waits for admission for 30 minutes; evaluate_rl is preempted for 5 minutes only
            _series(running, "1x30", stage="predict_rl", state="queued"),
            _series(running, "1 1 1 1 1 0x25", stage="evaluate_rl", state="preempted"),
        ],
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "StageFailed", "exp_alerts": []},
            {"eval_time": "4m", "alertname": "StageFailed", "exp_alerts": [
                {"exp_labels": {"severity": "critical", "namespace": "ml", "run": RUN, "stage": "sft"},
                 "exp_annotations": {
                     "summary": f"Stage sft of run {RUN} failed",
                     "description": "The Job of stage sft failed; the run stops there. kubectl get events -l "
                                    f"text2sql-rlhf.dev/run-id={RUN} says why."}}]},
            {"eval_time": "4m", "alertname": "RunFailed", "exp_alerts": [
                {"exp_labels": {"severity": "critical", "namespace": "ml", "run": RUN},
                 "exp_annotations": {"summary": f"Run {RUN} failed",
                                     "description": f"Run {RUN} failed; no further stage starts. t2s status "
                                                    f"--run-id {RUN} shows where."}}]},
            {"eval_time": "9m", "alertname": "StageStalled", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "StageStalled", "exp_alerts": [_stalled("rm_data")]},
            {"eval_time": "30m", "alertname": "StageStalled", "exp_alerts": [_stalled("rl"), _stalled("rm_data")]},
            {"eval_time": "10m", "alertname": "StageWaitingTooLong", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "StageWaitingTooLong", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "namespace": "ml", "run": RUN, "stage": "predict_rl"},
                 "exp_annotations": {
                     "summary": f"Stage predict_rl of run {RUN} has waited for admission for 15 minutes",
                     "description": "Its Job is suspended by its queue (Kueue): not enough quota, or preempted and "
                                    "not re-admitted. kubectl get workloads shows why."}}]},
        ],
    }]
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
                                                        "tests": tests}, sort_keys=False))
    proc = _promtool("test", "rules", "test.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_dashboard_configmap_for_the_grafana_sidecar(documents) -> None:
    (cm,) = [d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(cm["data"]["text2sql-rlhf.json"])
    assert board == json.loads(DASHBOARD.read_text())
    assert board["uid"] == "text2sql-rlhf"
    titles = {p["title"] for p in board["panels"]}
    assert {"Run state", "Stage states", "Stage durations", "Training loss", "RL reward",
            "RL KL to the reference policy", "Tokens per second", "GPU memory (stage process peak)"} <= titles
    assert not [d for d in render({"runId": RUN}) if d["metadata"]["name"].endswith("-dashboard")]


def test_every_dashboard_query_is_valid_promql(tmp_path) -> None:
    """promtool parses each panel's query (as a recording rule), Grafana's variables filled in."""
    queries = dashboard_queries()
    assert len(queries) >= 10
    rules = [{"record": f"panel:{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]
    path = tmp_path / "panels.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = _promtool("check", "rules", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_metric_the_dashboard_and_rules_use_is_exported(documents, tmp_path) -> None:
    """Each t2s_* series a panel or an alert reads is one the stages or the controller export (a renamed
    metric would leave a panel silently empty)."""
    import re

    from text2sql_core.k8s.metrics import ControllerMetrics
    from text2sql_core.stages.progress import _KNOWN

    exported = {name for name, _ in _KNOWN.values()}
    for family in ControllerMetrics().registry.collect():
        exported |= {family.name, f"{family.name}_total"} if family.type == "counter" else {family.name}
    rules = rules_file(documents, tmp_path / "rules.yaml").read_text()
    used = set(re.findall(r"\bt2s_[a-z_]+", rules + " ".join(expr for _, expr in dashboard_queries())))
    assert len(used) >= 8
    assert used <= exported, f"not exported by any stage or the controller: {sorted(used - exported)}"


def test_the_readme_dcgm_join_is_valid_promql(tmp_path) -> None:
    """The README's query joining DCGM exporter's GPU series to run and stage parses."""
    from tests.charts.render import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    start = readme.index("    DCGM_FI_DEV_FB_USED\n")
    block = readme[start:readme.index("\n\n", start)]
    expr = " ".join(line.strip() for line in block.splitlines())
    assert "label_text2sql_rlhf_dev_run_id" in expr and "label_text2sql_rlhf_dev_stage" in expr
    path = tmp_path / "dcgm.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "readme", "rules": [{"record": "gpu:fb_used", "expr": expr}]}]}))
    proc = _promtool("check", "rules", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
