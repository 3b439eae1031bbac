"""Runs on the simulated cluster that end after sft: the chart rendered and applied to the fake API
server, the controller in a thread, the fake kubelet running the stage pods as subprocesses,
SeaweedFS as the S3 store, the tiny model with a few sft steps.

* sft as a multi-node step (``nodes: 2``, one rank per node, gloo on CPU): the Indexed Job the
  chart renders runs one pod per completion index; each gets its ``JOB_COMPLETION_INDEX`` (its
  ``--node-rank``) and reaches the index-0 pod through the headless Service's DNS name; the two
  ranks train as one and only rank 0 publishes.
* sft's pod evicted mid-run (a node drain): the stage is shown preempted, never failed, while its
  replacement pod waits; the replacement resumes from the newest checkpoint and the run completes.

Every step after sft is disabled in the chart, so the run is prepare and sft.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.render import render
from tests.k8s.conftest import events, wait_until
from tests.k8s.fake_apiserver import FakeApiServer
from tests.k8s.kubelet import EVICTION_REASON, FakeKubelet
from tests.k8s.test_e2e import TINY_RUN, apply
from tests.servers import free_port, on_seaweedfs, unique_name
from text2sql_core.graph import STEPS
from text2sql_core.k8s.controller import Controller, ControllerConfig, StoreManifests
from text2sql_core.k8s.decide import PREEMPTIONS_ANNOTATION, RUN_LABEL, STAGE_STATE_ANNOTATION
from text2sql_core.k8s.status import collect_status, format_status
from text2sql_core.store.manifest import read_manifest

pytestmark = [pytest.mark.slow, on_seaweedfs]

NAMESPACE = "ml"
SECRET = "s3-keys"
TIMEOUT_S = 300
RUN_STEPS = ("prepare", "sft")


def _values(s3: Any, bucket: str, run_id: str, *, sft_stage: dict[str, Any], sft: dict[str, Any]) -> dict[str, Any]:
    """The chart's values for a prepare + sft run of the tiny model (backoffLimit 0: any counted pod
    failure fails the Job)."""
    run_config = json.loads(json.dumps(TINY_RUN))
    run_config["stages"]["sft"].update(sft)
    data = "datasets/demo"
    return {
        "runId": run_id,
        "runConfig": {
            "workdir": "/work",
            "store": {"kind": "s3", "s3": {"endpoint": s3.endpoint, "bucket": bucket, "secure": False,
                                           "region": s3.region}},
            "data": {"train": f"store://{data}/train.json", "dev": f"store://{data}/dev.json",
                     "tables": f"store://{data}/tables.json", "db_dir": f"store://{data}/database"},
            **run_config,
        },
        "store": {"s3": {"existingSecret": SECRET}},
        "stageDefaults": {"backoffLimit": 0},
        "stages": {s.name: ({"gpus": 0, **sft_stage} if s.name == "sft" else {"gpus": 0}) if s.name in RUN_STEPS
                   else {"enabled": False} for s in STEPS},
        # every pod of this host shares its network: the rendezvous port must be free
        "distributed": {"masterPort": free_port()},
    }


class Cluster:
    """The rendered run applied to the fake API server, with the kubelet and a controller running."""

    def __init__(self, apiserver: FakeApiServer, s3: Any, store: Any, tmp_path: Path, run_id: str,
                 values: dict[str, Any]) -> None:
        self.apiserver, self.store, self.run_id = apiserver, store, run_id
        docs = render(values, release="t2s", namespace=NAMESPACE)
        (spec_map,) = [d for d in docs if d["metadata"]["name"].endswith("-stages")]
        self.specs = {k.removesuffix(".yaml"): yaml.safe_load(v) for k, v in spec_map["data"].items()}
        assert sorted(self.specs) == sorted(RUN_STEPS)
        self.jobs = {step: spec["metadata"]["name"] for step, spec in self.specs.items()}
        self.docs = docs
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET},
                  "data": {k: base64.b64encode(v.encode()).decode() for k, v in s3.environ().items()}}
        # the controller runs in this process (a thread), not as the chart's Deployment: one process less
        apply(apiserver, [secret, *[d for d in docs if d["kind"] != "Deployment"]], NAMESPACE)
        self.kubelet = FakeKubelet(apiserver, NAMESPACE, tmp_path / "node").start()
        self.api = apiserver.api_client()
        self.controller = Controller(self.api, ControllerConfig(namespace=NAMESPACE, run_id=run_id, resync_s=5.0,
                                                                manifest_poll_s=0.5, backoff_base_s=0.05,
                                                                backoff_max_s=0.5), StoreManifests(store))
        self.thread = self.controller.start_in_thread()

    def job(self, step: str) -> dict[str, Any]:
        obj = self.apiserver.get_object("jobs", NAMESPACE, self.jobs[step], group="batch")
        assert obj is not None, f"Job of {step} not created"
        return obj

    def run_events(self, reason: str | None = None) -> list[dict[str, Any]]:
        return [e for e in events(self.apiserver, reason, NAMESPACE) if e["metadata"]["labels"][RUN_LABEL] == self.run_id]

    def check(self) -> None:
        """Fail at once, with the pod logs, when a Job failed or the kubelet hit an error."""
        assert not self.kubelet.errors, self.kubelet.errors
        for step, name in self.jobs.items():
            obj = self.apiserver.get_object("jobs", NAMESPACE, name, group="batch")
            conditions = {c["type"] for c in ((obj or {}).get("status") or {}).get("conditions") or []
                          if c["status"] == "True"}
            assert "Failed" not in conditions, f"{step} failed:\n{self.kubelet.logs(name)[-4000:]}"

    def wait(self, predicate: Any, what: str, timeout: float = TIMEOUT_S) -> Any:
        def checked() -> Any:
            self.check()
            return predicate()
        return wait_until(checked, timeout=timeout, what=what)

    def succeeded(self) -> bool:
        return bool(self.run_events("RunSucceeded"))

    def status(self) -> Any:
        return collect_status(self.run_id, self.store, steps=list(RUN_STEPS),
                              jobs=[j for j in self.apiserver.objects("jobs", NAMESPACE, group="batch")
                                    if j["metadata"]["labels"].get(RUN_LABEL) == self.run_id],
                              pods=self.apiserver.objects("pods", NAMESPACE))

    def stop(self) -> None:
        self.controller.stop()
        self.thread.join(timeout=10)
        self.kubelet.stop()
        self.api.close()


@pytest.fixture
def cluster(seaweedfs, apiserver, tmp_path: Path) -> Iterator[Any]:
    """``cluster(run_id, sft_stage=..., sft=...)`` starts a prepare + sft run; stopped at teardown."""
    from text2sql_core.data.demo import write_demo

    s3 = seaweedfs.s3
    bucket = unique_name("t2s-cluster")
    store = s3.open(bucket)
    write_demo(tmp_path / "data", seed=0, train_size=40, dev_size=10)
    store.put_tree(tmp_path / "data", "datasets/demo")
    started: list[Cluster] = []

    def start(run_id: str, *, sft_stage: dict[str, Any], sft: dict[str, Any]) -> Cluster:
        c = Cluster(apiserver, s3, store, tmp_path, run_id, _values(s3, bucket, run_id, sft_stage=sft_stage, sft=sft))
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def _events_in(log: str, event: str) -> list[dict[str, Any]]:
    return [rec for line in log.splitlines() if line.startswith("{") and f'"{event}"' in line
            and (rec := json.loads(line)).get("event") == event]


def test_sft_as_a_two_pod_indexed_job_trains_one_run_and_publishes_once(cluster):
    run = cluster("nodes", sft_stage={"gpus": 1, "nodes": 2}, sft={"max_steps": 4, "save_steps": 2})
    sft_name = run.jobs["sft"]
    spec = run.specs["sft"]["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    (service,) = [d for d in run.docs if d["kind"] == "Service" and d["metadata"]["name"] == sft_name]
    assert service["spec"]["clusterIP"] == "None"
    run.wait(run.succeeded, "RunSucceeded")

    pods = sorted((p for p in run.kubelet.pods if p.owner == sft_name), key=lambda p: p.index)
    assert [(p.index, p.attempt) for p in pods] == [(0, 1), (1, 1)]  # one pod per index, none retried
    for p in pods:
        # JOB_COMPLETION_INDEX became the node rank; the index-0 pod's DNS name resolved to this host
        assert f"--node-rank={p.index}" in p.argv and "--nnodes=2" in p.argv, p.argv
        assert "--master-addr=127.0.0.1" in p.argv, p.argv
        obj = run.apiserver.get_object("pods", NAMESPACE, p.name)
        assert obj["spec"]["hostname"] == f"{sft_name}-{p.index}" and obj["spec"]["subdomain"] == sft_name
        assert obj["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == str(p.index)
        assert obj["status"]["phase"] == "Succeeded"
    status = run.job("sft")["status"]
    assert status["succeeded"] == 2 and status["completedIndexes"] == "0-1"

    logs = [p.log.read_text() for p in pods]
    (published,) = _events_in(logs[0], "step published")
    assert published["ranks"] == 2 and not _events_in(logs[1], "step published")
    for p, log in zip(pods, logs, strict=True):  # node i ran global rank i (one rank per node)
        ranks = {json.loads(line).get("rank") for line in log.splitlines() if line.startswith("{")}
        assert ranks == {p.index}, (p.name, ranks)
    manifest = read_manifest(run.store, f"runs/{run.run_id}/sft")
    assert manifest is not None and manifest.metrics["steps"] == 4
    reasons = [e["reason"] for e in run.run_events()]
    assert "StageFailed" not in reasons and "StagePreempted" not in reasons
    assert run.status().state == "succeeded"


def _checkpoints(store: Any, run_id: str) -> list[int]:
    prefix = f"runs/{run_id}/sft/_checkpoints/"
    return sorted(int(i.key[len(prefix):].split("/")[0]) for i in store.list(prefix)
                  if i.key.endswith("/_manifest.json"))


def test_an_evicted_sft_pod_shows_preempted_and_its_replacement_resumes(cluster):
    run = cluster("evict", sft_stage={}, sft={"max_steps": 8, "save_steps": 2})
    sft_name = run.jobs["sft"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in \
        run.specs["sft"]["spec"]["podFailurePolicy"]["rules"]
    run.wait(lambda: _checkpoints(run.store, run.run_id) and run.kubelet.metrics_targets(), "sft's first checkpoint")
    evicted = run.kubelet.disrupt(sft_name, hold_s=math.inf)  # a node drain; no room for the new pod yet
    at_eviction = _checkpoints(run.store, run.run_id)[-1]

    run.wait(lambda: run.job("sft")["metadata"]["annotations"].get(STAGE_STATE_ANNOTATION) == "preempted",
             "sft recorded preempted", timeout=60)
    # the process ends first; the kubelet records phase Failed on its next pass
    run.wait(lambda: run.kubelet.logs(sft_name) and evicted.proc.poll() is not None
             and run.apiserver.get_object("pods", NAMESPACE, evicted.name)["status"].get("phase") in ("Succeeded", "Failed"),
             "the evicted pod to end", timeout=60)
    (ev,) = run.run_events("StagePreempted")
    assert f"pod {evicted.name}: {EVICTION_REASON}" in ev["message"] and ev["type"] == "Normal"
    evicted_obj = run.apiserver.get_object("pods", NAMESPACE, evicted.name)
    assert evicted_obj["status"]["phase"] == "Failed"
    assert any(c["type"] == "DisruptionTarget" and c["status"] == "True" for c in evicted_obj["status"]["conditions"])
    # what `t2s status` shows while the replacement waits (the pods come from the cluster)
    newest = _checkpoints(run.store, run.run_id)[-1]
    status = run.status()
    (row,) = [s for s in status.steps if s.step == "sft"]
    assert status.state == "running" and row.state == "preempted", format_status(status)
    assert f"resumes from step {newest} when a new pod runs" in row.note and EVICTION_REASON in row.note
    time.sleep(1.0)  # many controller passes: it stays preempted while the new pod is Pending
    assert run.job("sft")["metadata"]["annotations"][STAGE_STATE_ANNOTATION] == "preempted"

    run.kubelet.release(sft_name)  # the drained capacity is back
    run.wait(run.succeeded, "RunSucceeded")
    first, second = [p for p in run.kubelet.pods if p.owner == sft_name]
    assert first is evicted and first.disrupted and not second.disrupted  # backoffLimit 0, yet not failed
    resumed = _events_in(second.log.read_text(), "sft data encoded")
    assert resumed and resumed[0]["resume_from_step"] >= at_eviction > 0, (resumed, at_eviction)
    metrics = read_manifest(run.store, f"runs/{run.run_id}/sft").metrics
    assert metrics["steps"] == 8 and 0 < at_eviction <= metrics["resumed_from_step"] < 8, metrics
    reasons = [e["reason"] for e in run.run_events()]
    assert "StageFailed" not in reasons and "RunFailed" not in reasons
    assert reasons.count("StagePreempted") == 1 and reasons.count("StageResumed") == 1
    assert run.job("sft")["metadata"]["annotations"][PREEMPTIONS_ANNOTATION] == "1"
    assert run.status().state == "succeeded"
