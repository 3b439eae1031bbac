"""A whole run on a simulated cluster: the Helm chart rendered for a run and applied to the fake API
server, the fake kubelet running every pod (stages and controller) as a subprocess, SeaweedFS as the
S3 store, a tiny model. The controller the chart deploys chains the nine stages to the final
evaluation; nothing in the test unsuspends a Job.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.charts.render import render
from tests.k8s.conftest import events, suspend_patches
from tests.k8s.fake_apiserver import FakeApiServer
from tests.k8s.kubelet import FakeKubelet
from tests.servers import on_seaweedfs, unique_name
from text2sql_core.graph import STEPS
from text2sql_core.k8s.decide import RUN_STATE_ANNOTATION, STAGE_LABEL
from text2sql_core.k8s.status import collect_status
from text2sql_core.store.manifest import read_manifest

NAMESPACE = "ml"
RUN = "e2e"
SECRET = "s3-keys"
TIMEOUT_S = 600

#: a run small enough for two CPU cores: a one-layer model, a few steps per stage
TINY_RUN = {
    "model": {"path": "tiny", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
                                       "vocab_size": 300, "max_positions": 512}},
    "stages": {
        "sft": {"max_steps": 2, "batch_size": 4, "save_steps": 2, "logging_steps": 1, "num_threads": 1},
        "predict": {"batch_size": 10, "max_new_tokens": 16, "num_threads": 1},
        "rm_data": {"num_candidates": 2, "max_new_tokens": 16, "batch_size": 8, "limit": 8,
                    "sandbox_processes": 1, "num_threads": 1},
        "rm": {"max_steps": 2, "batch_size": 4, "eval_steps": 2, "save_steps": 2, "logging_steps": 1,
               "num_threads": 1},
        "ppo": {"max_steps": 1, "batch_size": 4, "max_new_tokens": 16, "eval_train_prompts": 0, "save_steps": 1,
                "num_threads": 1, "reward": {"sandbox_processes": 1}},
        "evaluate": {"workers": 1},
    },
}


def _plural(kind: str) -> str:
    return kind.lower() + "s"


def apply(server: FakeApiServer, docs: list[dict[str, Any]], namespace: str) -> list[str]:
    """``kubectl apply`` of freshly rendered manifests: create each object in the namespace."""
    created = []
    for doc in docs:
        api_version = doc["apiVersion"]
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        url = f"{server.url}{base}/namespaces/{namespace}/{_plural(doc['kind'])}"
        req = urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 201
        created.append(f"{doc['kind']}/{doc['metadata']['name']}")
    return created


def _job_state(job: dict[str, Any]) -> str:
    conditions = {c["type"] for c in (job.get("status") or {}).get("conditions") or [] if c["status"] == "True"}
    return "Failed" if "Failed" in conditions else "Complete" if "Complete" in conditions else "-"


@pytest.mark.slow
@on_seaweedfs
def test_whole_run_chained_by_the_deployed_controller(seaweedfs, apiserver, tmp_path: Path):
    from text2sql_core.data.demo import write_demo

    s3 = seaweedfs.s3
    bucket = unique_name("t2s-e2e")
    store = s3.open(bucket)
    write_demo(tmp_path / "data", seed=0, train_size=40, dev_size=10)
    store.put_tree(tmp_path / "data", "datasets/demo")  # how a cluster run finds its data

    values = {
        "runId": RUN,
        "runConfig": {
            "workdir": "/work",
            "store": {"kind": "s3", "s3": {"endpoint": s3.endpoint, "bucket": bucket, "secure": False,
                                           "region": s3.region}},
            "data": {"train": "store://datasets/demo/train.json", "dev": "store://datasets/demo/dev.json",
                     "tables": "store://datasets/demo/tables.json", "db_dir": "store://datasets/demo/database"},
            **TINY_RUN,
        },
        "store": {"s3": {"existingSecret": SECRET}},
        "stageDefaults": {"backoffLimit": 0},
        "stages": {s.name: {"gpus": 0} for s in STEPS},
        "controller": {"extraArgs": ["--resync-seconds", "5", "--manifest-poll-seconds", "0.5"]},
    }
    docs = render(values, release="t2s", namespace=NAMESPACE)
    kinds = sorted({d["kind"] for d in docs})
    assert {"ConfigMap", "Deployment", "Job", "Role", "RoleBinding"} <= set(kinds), kinds
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET},
              "data": {k: base64.b64encode(v.encode()).decode() for k, v in s3.environ().items()}}
    apply(apiserver, [secret, *docs], NAMESPACE)
    jobs = {j["metadata"]["labels"][STAGE_LABEL]: j["metadata"]["name"]
            for j in apiserver.objects("jobs", NAMESPACE, group="batch")}
    assert sorted(jobs) == sorted(s.name for s in STEPS)

    kubelet = FakeKubelet(apiserver, NAMESPACE, tmp_path / "node").start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            states = {step: _job_state(apiserver.get_object("jobs", NAMESPACE, name, group="batch"))
                      for step, name in jobs.items()}
            failed = [s for s, st in states.items() if st == "Failed"]
            assert not failed, f"{failed} failed:\n" + "\n".join(kubelet.logs(jobs[s])[-3000:] for s in failed)
            assert not kubelet.errors, kubelet.errors
            if all(st == "Complete" for st in states.values()) and events(apiserver, "RunSucceeded", NAMESPACE):
                break
            assert time.monotonic() < deadline, f"run not done after {TIMEOUT_S}s: {states}"
            time.sleep(0.5)
        controller_pods = [p for p in kubelet.pods if p.owner_kind == "Deployment"]
    finally:
        kubelet.stop()

    assert len(controller_pods) == 1, "the controller pod restarted:\n" + kubelet.logs(controller_pods[0].owner)
    for step in STEPS:
        patches = suspend_patches(apiserver, jobs[step.name])
        assert len(patches) == (0 if step.name == "prepare" else 1), step.name
        assert all(p.field_manager == "t2s-controller" for p in patches)
        job = apiserver.get_object("jobs", NAMESPACE, jobs[step.name], group="batch")
        assert job["metadata"]["annotations"][RUN_STATE_ANNOTATION] == "succeeded"
        assert read_manifest(store, f"runs/{RUN}/{step.name}") is not None, step.name
    final = read_manifest(store, f"runs/{RUN}/evaluate_rl")
    assert "ex" in final.metrics and 0.0 <= final.metrics["ex"] <= 1.0
    assert "report.md" in {f.path for f in final.files}
    status = collect_status(RUN, store, steps=[s.name for s in STEPS],
                            jobs=apiserver.objects("jobs", NAMESPACE, group="batch"))
    assert status.state == "succeeded" and {s.state for s in status.steps} == {"published"}
    assert "ex" in next(s for s in status.steps if s.step == "evaluate_rl").metrics
