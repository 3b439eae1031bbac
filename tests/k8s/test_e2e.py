"""A whole run on a simulated cluster under Kueue: the Helm chart rendered for a run (Kueue, the
dashboard and the alert rules enabled) and applied to the fake API server, the fake Kueue admitting
one Job at a time, the fake kubelet running every pod (stages and controller) as a subprocess,
SeaweedFS as the S3 store, a tiny model, and a real Prometheus scraping the controllers and the
stage pods with the chart's rules loaded.

The deployed controller creates the stage Jobs in graph order; Kueue unsuspends each on
admission. sft is preempted once it has published a checkpoint: its pod is terminated, the Job is
re-admitted and the stage resumes from that checkpoint; rm's pod is evicted (a node drain: the
stage shows preempted while its replacement waits 2 s) and replaced; the run still succeeds, with no StageFailed or RunFailed. A second run whose prepare step
cannot find its data fails, and Prometheus fires StageFailed and RunFailed for it (and for it only).
Every dashboard panel's query returns series.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.monitoring import dashboard_queries, prometheus, prometheus_missing, rules_file
from tests.charts.render import render
from tests.k8s.conftest import controller_spec_writes, creates, events
from tests.k8s.fake_apiserver import FakeApiServer
from tests.k8s.fake_kueue import FakeKueue
from tests.k8s.kubelet import FakeKubelet
from tests.servers import free_port, on_seaweedfs, unique_name
from text2sql_core.graph import STEPS
from text2sql_core.k8s.decide import RUN_LABEL, RUN_STATE_ANNOTATION, STAGE_LABEL
from text2sql_core.k8s.status import collect_status
from text2sql_core.store.manifest import read_manifest

NAMESPACE = "ml"
RUN = "e2e"
BAD_RUN = "e2e-bad"
QUEUE = "gpu"
SECRET = "s3-keys"
TIMEOUT_S = 600
PREEMPTED_STEP = "sft"
#: the step training the policy with PPO (the default rl.algorithm)
RL_STEP = next(s.name for s in STEPS if s.kind == "ppo")
#: a step whose pod is evicted once (a node drain): replaced without using up backoffLimit 0
DISRUPTED_STEP = "rm"

#: a run small enough for two CPU cores: a one-layer model, a few steps per stage; sft checkpoints
#: every 2 of its 12 steps, so it can be preempted between two checkpoints
TINY_RUN = {
    "model": {"path": "tiny", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
                                       "vocab_size": 300, "max_positions": 512}},
    "stages": {
        "sft": {"max_steps": 12, "batch_size": 4, "save_steps": 2, "logging_steps": 1, "num_threads": 1},
        "predict": {"batch_size": 10, "max_new_tokens": 16, "num_threads": 1},
        "rm_data": {"num_candidates": 2, "max_new_tokens": 16, "batch_size": 8, "limit": 8,
                    "sandbox_processes": 1, "num_threads": 1},
        "rm": {"max_steps": 2, "batch_size": 4, "eval_steps": 2, "save_steps": 2, "logging_steps": 1,
               "num_threads": 1},
        "ppo": {"max_steps": 4, "batch_size": 4, "max_new_tokens": 16, "eval_train_prompts": 0, "save_steps": 1,
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


class Prometheus:
    """A Prometheus server on 127.0.0.1 scraping the targets in a file_sd file four times a second (tiny
    stages serve their metrics for a few seconds only)."""

    def __init__(self, workdir: Path, rule_files: list[Path]) -> None:
        self.workdir = workdir
        self.targets = workdir / "targets.json"
        self.targets.write_text("[]")
        self.port = free_port()
        config = {"global": {"scrape_interval": "250ms", "scrape_timeout": "200ms", "evaluation_interval": "1s"},
                  "rule_files": [str(p) for p in rule_files],
                  "scrape_configs": [{"job_name": "t2s", "file_sd_configs": [
                      {"files": [str(self.targets)], "refresh_interval": "1s"}]}]}
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [prometheus(), f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert self.proc.poll() is None, (workdir / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "Prometheus not ready after 60s"
            time.sleep(0.2)

    def set_targets(self, targets: list[tuple[str, dict[str, str]]]) -> None:
        body = json.dumps([{"targets": [address], "labels": labels} for address, labels in targets])
        if body != self.targets.read_text():
            tmp = self.targets.with_suffix(".tmp")
            tmp.write_text(body)
            tmp.replace(self.targets)  # atomic: Prometheus never reads half a file

    def api(self, path: str, **params: Any) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as resp:
            doc = json.loads(resp.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def prometheus_dir(tmp_path: Path) -> Iterator[Path]:
    problem = prometheus_missing()
    if problem:
        pytest.fail(problem)
    path = tmp_path / "prometheus"
    path.mkdir()
    yield path


def _values(s3: Any, bucket: str, run_id: str, data: str) -> dict[str, Any]:
    return {
        "runId": run_id,
        "runConfig": {
            "workdir": "/work",
            "store": {"kind": "s3", "s3": {"endpoint": s3.endpoint, "bucket": bucket, "secure": False,
                                           "region": s3.region}},
            "data": {"train": f"store://{data}/train.json", "dev": f"store://{data}/dev.json",
                     "tables": f"store://{data}/tables.json", "db_dir": f"store://{data}/database"},
            **TINY_RUN,
        },
        "store": {"s3": {"existingSecret": SECRET}},
        "stageDefaults": {"backoffLimit": 0},
        "stages": {s.name: {"gpus": 0} for s in STEPS},
        "kueue": {"enabled": True, "queueName": QUEUE},
        "metrics": {"prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}},
        "controller": {"extraArgs": ["--resync-seconds", "5", "--manifest-poll-seconds", "0.5"]},
    }


def _alerts(prom: Prometheus) -> set[tuple[str, str, str]]:
    """(alertname, run, state) of every active alert."""
    return {(a["labels"]["alertname"], a["labels"].get("run", ""), a["state"]) for a in prom.api("alerts")["alerts"]}


@pytest.mark.slow
@on_seaweedfs
def test_whole_run_under_kueue_with_a_preemption_and_prometheus(seaweedfs, apiserver, tmp_path: Path,
                                                                 prometheus_dir: Path):
    from text2sql_core.data.demo import write_demo

    s3 = seaweedfs.s3
    bucket = unique_name("t2s-e2e")
    store = s3.open(bucket)
    write_demo(tmp_path / "data", seed=0, train_size=40, dev_size=10)
    store.put_tree(tmp_path / "data", "datasets/demo")  # how a cluster run finds its data

    docs = render(_values(s3, bucket, RUN, "datasets/demo"), release="t2s", namespace=NAMESPACE)
    bad_docs = render(_values(s3, bucket, BAD_RUN, "datasets/missing"), release="bad", namespace=NAMESPACE)
    crds = [d for d in docs + bad_docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
    rules = [rules_file(docs, prometheus_dir / "rules-run.yaml"), rules_file(bad_docs, prometheus_dir / "rules-bad.yaml")]
    kinds = sorted({d["kind"] for d in docs})
    assert {"ConfigMap", "Deployment", "Role", "RoleBinding", "PrometheusRule"} <= set(kinds), kinds
    assert "Job" not in kinds  # the controller creates them
    (spec_map,) = [d for d in docs if d["metadata"]["name"].endswith("-stages")]
    jobs = {k.removesuffix(".yaml"): yaml.safe_load(v)["metadata"]["name"] for k, v in spec_map["data"].items()}
    assert sorted(jobs) == sorted(s.name for s in STEPS)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET},
              "data": {k: base64.b64encode(v.encode()).decode() for k, v in s3.environ().items()}}

    prom = Prometheus(prometheus_dir, rules)
    kueue = FakeKueue(apiserver, NAMESPACE, max_jobs=1, queues=(QUEUE,)).start()
    apply(apiserver, [secret, *[d for d in docs + bad_docs if d not in crds]], NAMESPACE)
    kubelet = FakeKubelet(apiserver, NAMESPACE, tmp_path / "node").start()
    checkpoint_prefix = f"runs/{RUN}/{PREEMPTED_STEP}/_checkpoints/"
    seen_at_preemption: list[int] = []
    started = time.time()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            prom.set_targets([(address, {"namespace": NAMESPACE, "pod": pod.name})
                              for pod, address in kubelet.metrics_targets()])
            live = {j["metadata"]["name"]: j for j in apiserver.objects("jobs", NAMESPACE, group="batch")}
            states = {step: _job_state(live[name]) if name in live else "absent" for step, name in jobs.items()}
            failed = [s for s, st in states.items() if st == "Failed"]
            assert not failed, f"{failed} failed:\n" + "\n".join(kubelet.logs(jobs[s])[-3000:] for s in failed)
            assert not kubelet.errors and not kueue.errors, (kubelet.errors, kueue.errors)
            sft = live.get(jobs[PREEMPTED_STEP])
            if not seen_at_preemption and sft is not None and not sft["spec"]["suspend"] \
                    and states[PREEMPTED_STEP] != "Complete":
                steps = sorted(int(i.key[len(checkpoint_prefix):].split("/")[0]) for i in store.list(checkpoint_prefix)
                               if i.key.endswith("/_manifest.json"))
                if steps:  # a checkpoint is published: a higher-priority workload takes the quota now
                    seen_at_preemption.append(steps[-1])
                    kueue.preempt(jobs[PREEMPTED_STEP], hold_s=3.0)
            victim = [pod for pod, _ in kubelet.metrics_targets() if pod.owner == jobs[DISRUPTED_STEP]]
            if victim and not any(p.disrupted for p in kubelet.pods) and time.monotonic() - victim[0].started > 1.0:
                kubelet.disrupt(jobs[DISRUPTED_STEP], hold_s=2.0)
            run_done = all(st == "Complete" for st in states.values()) and [
                e for e in events(apiserver, "RunSucceeded", NAMESPACE) if e["metadata"]["labels"][RUN_LABEL] == RUN]
            bad_alerted = {("StageFailed", BAD_RUN, "firing"), ("RunFailed", BAD_RUN, "firing")} <= _alerts(prom)
            if run_done and bad_alerted:
                break
            assert time.monotonic() < deadline, f"run not done after {TIMEOUT_S}s: {states}, alerts {_alerts(prom)}"
            time.sleep(0.2)
        time.sleep(3)  # a few more scrapes of the controllers' final states
        alerts = _alerts(prom)
        panels = {title: prom.api("query_range", query=expr, start=started, end=time.time(), step="1s")["result"]
                  for title, expr in dashboard_queries()}
        controller_pods = [p for p in kubelet.pods if p.owner_kind == "Deployment"]
    finally:
        kubelet.stop()
        kueue.stop()
        prom.stop()

    # the controllers never restarted and never wrote spec.suspend; Kueue admitted every Job once, sft twice
    assert len(controller_pods) == 2, [p.owner for p in controller_pods]
    assert controller_spec_writes(apiserver) == []
    for step in STEPS:
        assert len(creates(apiserver, jobs[step.name])) == 1, step.name
        admitted = kueue.did("admitted").count(jobs[step.name])
        assert admitted == (2 if step.name == PREEMPTED_STEP else 1), (step.name, admitted)
        job = apiserver.get_object("jobs", NAMESPACE, jobs[step.name], group="batch")
        assert job["metadata"]["annotations"][RUN_STATE_ANNOTATION] == "succeeded"
        assert read_manifest(store, f"runs/{RUN}/{step.name}") is not None, step.name
    assert kueue.did("evicted") == [jobs[PREEMPTED_STEP]]

    # preempted, shown as such, resumed from its checkpoint, never failed
    run_events = [e for e in events(apiserver, namespace=NAMESPACE) if e["metadata"]["labels"][RUN_LABEL] == RUN]
    reasons = [e["reason"] for e in run_events]
    assert "StageFailed" not in reasons and "RunFailed" not in reasons
    for reason in ("StagePreempted", "StageResumed"):  # sft by Kueue, rm by the eviction of its pod
        stages = sorted(e["metadata"]["labels"][STAGE_LABEL] for e in run_events if e["reason"] == reason)
        assert stages == sorted([PREEMPTED_STEP, DISRUPTED_STEP]), (reason, stages)
    first, second = [p for p in kubelet.pods if p.owner == jobs[PREEMPTED_STEP]]
    assert first.stopped and not second.stopped
    resumed = [json.loads(line) for line in second.log.read_text().splitlines()
               if line.startswith("{") and '"sft data encoded"' in line]
    assert resumed and resumed[0]["resume_from_step"] >= seen_at_preemption[0] > 0, (resumed, seen_at_preemption)

    evicted, replacement = [p for p in kubelet.pods if p.owner == jobs[DISRUPTED_STEP]]
    assert evicted.disrupted and not replacement.disrupted  # backoffLimit 0, yet not failed

    last_evaluate = next(s for s in reversed(STEPS) if s.kind == "evaluate")  # export comes after it
    final = read_manifest(store, f"runs/{RUN}/{last_evaluate.name}")
    assert "ex" in final.metrics and 0.0 <= final.metrics["ex"] <= 1.0
    assert "report.md" in {f.path for f in final.files}
    status = collect_status(RUN, store, steps=[s.name for s in STEPS],
                            jobs=[j for j in apiserver.objects("jobs", NAMESPACE, group="batch")
                                  if j["metadata"]["labels"][RUN_LABEL] == RUN])
    assert status.state == "succeeded" and {s.state for s in status.steps} == {"published"}

    # Prometheus: the failed run alerts, the preempted-but-successful one does not; every panel has data
    assert {a for a in alerts if a[1] == RUN} == set(), alerts
    bad_events = {e["reason"] for e in events(apiserver, namespace=NAMESPACE)
                  if e["metadata"]["labels"][RUN_LABEL] == BAD_RUN}
    assert {"StageFailed", "RunFailed"} <= bad_events
    import torch

    for title, result in panels.items():
        if title.startswith("GPU memory"):  # the stage reports it only with a CUDA GPU
            assert bool(result) == torch.cuda.is_available(), (title, result)
        else:
            assert result, f"dashboard panel {title!r} has no series"
    stage_states = {(r["metric"]["stage"], r["metric"]["state"]) for r in panels["Stage states"]}
    assert {("sft", "running"), ("sft", "preempted"), ("sft", "published")} <= stage_states
    assert any(r["metric"]["stage"] == "sft" for r in panels["Training loss"])
    assert any(r["metric"]["stage"] == RL_STEP for r in panels["RL reward"])
