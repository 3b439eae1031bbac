"""``t2s status``: from the store alone, and with the run's Jobs from a (fake) cluster."""

from __future__ import annotations

import json
import math
import socket

import pytest

from tests.k8s.conftest import NAMESPACE, create_jobs, job_name, publish_step
from tests.k8s.fake_apiserver import set_job_complete, set_job_failed, set_job_running, write_kubeconfig
from text2sql_core.cli import main
from text2sql_core.graph import STEPS
from text2sql_core.k8s.status import collect_status, format_status, key_metrics

RUN = "status"


@pytest.fixture
def run_config(tmp_path, store):
    path = tmp_path / "run.yaml"
    path.write_text(f"run_id: {RUN}\nstore:\n  kind: local\n  local:\n    path: {store.root}\n")
    return path


def test_key_metrics_picks_quality_numbers_only():
    metrics = {"ex": 0.61, "em": 0.5, "train_examples": 7000, "policy_loss": 0.12, "reward_mean": 0.3,
               "rm_accuracy": 0.8, "seconds": 12.0, "flag_ex": True, "nan_loss": math.nan, "format": "spider"}
    assert key_metrics(metrics) == {"ex": 0.61, "em": 0.5, "policy_loss": 0.12, "reward_mean": 0.3,
                                    "rm_accuracy": 0.8}


def test_status_from_the_store_alone(store):
    publish_step(store, RUN, "prepare", {"train_examples": 10})
    publish_step(store, RUN, "sft", {"train_loss": 0.4321})
    store.put_bytes(f"runs/{RUN}/predict_sft/_checkpoints/00000010/part", b"x")  # started, no manifest
    status = collect_status(RUN, store, steps=[s.name for s in STEPS])
    states = {s.step: s.state for s in status.steps}
    assert states["prepare"] == states["sft"] == "published"
    assert states["predict_sft"] == "running" and states["evaluate_rl"] == "pending"
    assert status.state == "running" and not status.cluster
    text = format_status(status)
    assert text.splitlines()[0].startswith(f"run {RUN}: running")
    sft_line = next(line for line in text.splitlines() if line.startswith("sft "))
    assert "published" in sft_line and "train_loss=0.4321" in sft_line
    for s in STEPS:
        publish_step(store, RUN, s.name, {"ex": 0.7} if s.kind == "evaluate" else {})
    assert collect_status(RUN, store, steps=[s.name for s in STEPS]).state == "succeeded"


def test_status_cli_with_the_run_jobs(apiserver, batch, store, run_config, tmp_path, capsys):
    create_jobs(batch, RUN)
    for step in ("prepare", "sft"):
        set_job_running(batch, NAMESPACE, job_name(RUN, step))
        set_job_complete(batch, NAMESPACE, job_name(RUN, step))
    publish_step(store, RUN, "prepare", {"train_examples": 3})  # sft: Complete, manifest missing
    batch.patch_namespaced_job(job_name(RUN, "rm_data"), NAMESPACE, {"spec": {"suspend": False}},
                               _content_type="application/merge-patch+json")
    set_job_failed(batch, NAMESPACE, job_name(RUN, "rm_data"), reason="PodFailurePolicy", message="exit code 2")
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
    args = ["status", "--run-id", RUN, "--config", str(run_config), "--namespace", NAMESPACE,
            "--kubeconfig", str(kubeconfig)]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert out.splitlines()[0] == f"run {RUN}: failed (failed at rm_data)   [cluster + store]"
    assert rows["prepare"].split()[1] == "published"
    assert rows["sft"].split()[1] == "complete" and "manifest not in the store" in rows["sft"]
    assert rows["rm_data"].split()[1] == "failed" and "exit code 2" in rows["rm_data"]
    assert rows["rl"].split()[1] == "skipped" and job_name(RUN, "rl") in rows["rl"]
    assert main([*args, "--output", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"] == "failed" and doc["cluster"] is True
    assert {s["step"]: s["state"] for s in doc["steps"]}["predict_sft"] == "skipped"


def test_status_cli_falls_back_to_the_store_when_the_cluster_is_unreachable(store, run_config, tmp_path, capsys):
    publish_step(store, RUN, "prepare")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}")
    assert main(["status", "--config", str(run_config), "--namespace", NAMESPACE,
                 "--kubeconfig", str(kubeconfig)]) == 0
    captured = capsys.readouterr()
    assert "cluster not reachable" in captured.err
    assert captured.out.splitlines()[0] == f"run {RUN}: running   [store only]"


def test_status_cli_shows_a_stage_whose_pod_was_evicted_as_preempted(apiserver, batch, store, run_config, tmp_path,
                                                                     capsys):
    from kubernetes import client

    create_jobs(batch, RUN)
    set_job_running(batch, NAMESPACE, job_name(RUN, "prepare"))
    set_job_complete(batch, NAMESPACE, job_name(RUN, "prepare"))
    publish_step(store, RUN, "prepare")
    sft = job_name(RUN, "sft")
    batch.patch_namespaced_job(sft, NAMESPACE, {"spec": {"suspend": False}},
                               _content_type="application/merge-patch+json")
    set_job_running(batch, NAMESPACE, sft, active=0)  # the evicted pod ended, its replacement is not up yet
    store.put_bytes(f"runs/{RUN}/sft/_checkpoints/00000006/_manifest.json", b"{}")
    # the pod as Kubernetes leaves it after `kubectl drain`: DisruptionTarget, phase Failed
    client.CoreV1Api(batch.api_client).create_namespaced_pod(NAMESPACE, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{sft}-x7k2p", "labels": {"text2sql-rlhf.dev/run-id": RUN, "batch.kubernetes.io/job-name": sft}},
        "spec": {"containers": [{"name": "stage", "image": "t2s"}]},
        "status": {"phase": "Failed", "conditions": [{"type": "DisruptionTarget", "status": "True",
                                                      "reason": "EvictionByEvictionAPI",
                                                      "message": "Eviction API: evicting"}]}})
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
    assert main(["status", "--run-id", RUN, "--config", str(run_config), "--namespace", NAMESPACE,
                 "--kubeconfig", str(kubeconfig)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert out.splitlines()[0].startswith(f"run {RUN}: running")
    assert rows["sft"].split()[1] == "preempted", out
    assert f"pod {sft}-x7k2p: EvictionByEvictionAPI" in rows["sft"] and "resumes from step 6 when a new pod runs" in rows["sft"]
