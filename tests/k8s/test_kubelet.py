"""The fake kubelet's Indexed Jobs: a pod per completion index with its ``JOB_COMPLETION_INDEX`` and
hostname, cluster DNS names of pods a headless Service selects, and the Job's completed indexes.
The containers run ``t2s --version`` (a second each), so this costs no training."""

from __future__ import annotations

from tests.k8s.conftest import wait_until
from tests.k8s.kubelet import FakeKubelet

NS = "ns"


def _indexed_job(name: str, subdomain: str) -> dict:
    """An Indexed Job shaped like the chart's multi-node step: the index is the node rank, index 0's
    DNS name the rendezvous address."""
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"completionMode": "Indexed", "completions": 2, "parallelism": 2, "backoffLimit": 0,
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {
                         "restartPolicy": "Never", "subdomain": subdomain,
                         "containers": [{"name": "stage", "image": "t2s:test",
                                         "command": ["t2s", "--version", "--node-rank=$(JOB_COMPLETION_INDEX)",
                                                     f"--master-addr={name}-0.{subdomain}"],
                                         "env": [{"name": "MASTER",
                                                  "value": f"{name}-0.{subdomain}.{NS}.svc.cluster.local:29500"}]}]}}}}


def test_an_indexed_job_runs_a_pod_per_index_and_resolves_its_rendezvous_name(apiserver, batch, tmp_path):
    from kubernetes import client

    core = client.CoreV1Api(batch.api_client)
    core.create_namespaced_service(NS, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ranks"},
                                        "spec": {"clusterIP": "None", "selector": {"app": "with-dns"}}})
    batch.create_namespaced_job(NS, _indexed_job("with-dns", "ranks"))
    batch.create_namespaced_job(NS, _indexed_job("no-dns", "missing"))  # no Service: no DNS record
    kubelet = FakeKubelet(apiserver, NS, tmp_path / "node").start()
    try:
        def complete(name: str) -> bool:
            job = apiserver.get_object("jobs", NS, name, group="batch")
            return any(c["type"] == "Complete" and c["status"] == "True"
                       for c in (job.get("status") or {}).get("conditions") or [])
        wait_until(lambda: complete("with-dns") and complete("no-dns"), timeout=120, what="both Jobs Complete")
    finally:
        kubelet.stop()
    assert not kubelet.errors, kubelet.errors
    job = apiserver.get_object("jobs", NS, "with-dns", group="batch")
    assert job["status"]["succeeded"] == 2 and job["status"]["completedIndexes"] == "0-1"

    pods = sorted((p for p in kubelet.pods if p.owner == "with-dns"), key=lambda p: p.index)
    assert [p.index for p in pods] == [0, 1]
    for p in pods:
        assert p.env["JOB_COMPLETION_INDEX"] == str(p.index) and p.env["HOSTNAME"] == f"with-dns-{p.index}"
        assert p.argv[2:] == [f"--node-rank={p.index}", "--master-addr=127.0.0.1"]
        assert p.env["MASTER"] == "127.0.0.1:29500"
        obj = apiserver.get_object("pods", NS, p.name)
        assert obj["status"]["phase"] == "Succeeded" and obj["spec"]["hostname"] == f"with-dns-{p.index}"
        assert obj["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == str(p.index)
        assert obj["metadata"]["ownerReferences"][0]["name"] == "with-dns"
    unresolved = [p for p in kubelet.pods if p.owner == "no-dns"]
    assert len(unresolved) == 2
    assert all(p.argv[-1] == "--master-addr=no-dns-0.missing" and p.env["MASTER"].startswith("no-dns-0.missing.")
               for p in unresolved)
