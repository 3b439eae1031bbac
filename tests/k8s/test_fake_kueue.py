"""The fake Kueue itself: the documented behaviour the controller tests rely on (webhook suspension,
FIFO admission within a Job or GPU quota, re-suspension without admission, preemption and requeue)."""

from __future__ import annotations

from tests.k8s.conftest import NAMESPACE, job, stage_job, wait_until
from tests.k8s.fake_apiserver import set_job_complete, set_job_running
from tests.k8s.fake_kueue import QUEUE_LABEL, FakeKueue


def _job(batch, name: str, *, queue: str | None = "gpu", gpus: int = 0, suspend: bool = False) -> str:
    body = stage_job("fk", name, 0, (), suspend=suspend, extra_labels={QUEUE_LABEL: queue} if queue else None)
    body["metadata"]["name"] = name
    if gpus:
        body["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    batch.create_namespaced_job(NAMESPACE, body)
    return name


def suspended(apiserver, name: str) -> bool:
    return job(apiserver, name)["spec"]["suspend"] is True


def test_gpu_quota_admits_in_strict_fifo_order(apiserver, batch):
    with FakeKueue(apiserver, NAMESPACE, max_jobs=None, max_gpus=2, queues=("gpu",)) as kueue:
        a = _job(batch, "a-one-gpu", gpus=1)
        wait_until(lambda: kueue.did("admitted") == [a], what="a admitted")
        b = _job(batch, "b-two-gpus", gpus=2)
        c = _job(batch, "c-one-gpu", gpus=1)
        plain = _job(batch, "d-no-queue", queue=None)  # not Kueue's: left alone, never suspended
        lost = _job(batch, "e-unknown-queue", queue="nowhere")
        wait_until(lambda: suspended(apiserver, b) and suspended(apiserver, c), what="b and c held")
        assert not suspended(apiserver, plain) and suspended(apiserver, lost)
        # 1 GPU is free, but b (2 GPUs) heads the queue: c, which would fit, waits behind it
        wait_until(lambda: len(kueue.history) >= 1, what="a sync")
        assert kueue.did("admitted") == [a]
        set_job_running(batch, NAMESPACE, a)
        set_job_complete(batch, NAMESPACE, a)
        wait_until(lambda: kueue.did("admitted") == [a, b], what="b admitted once a gave its GPU back")
        assert suspended(apiserver, c)
        kueue.preempt(b, hold_s=0.3)
        wait_until(lambda: kueue.did("admitted")[-1:] == [b] and len(kueue.did("admitted")) == 3,
                   what="b re-admitted in its place, before c")
        assert suspended(apiserver, c) and kueue.did("evicted") == [b]
        assert job(apiserver, b)["status"].get("startTime") is None or not suspended(apiserver, b)
    assert suspended(apiserver, lost) and not kueue.errors


def test_manage_jobs_without_queue_name_holds_unlabelled_jobs(apiserver, batch):
    with FakeKueue(apiserver, NAMESPACE, max_jobs=1, manage_jobs_without_queue_name=True) as kueue:
        held = _job(batch, "held", queue=None)  # no default LocalQueue: never admitted
        wait_until(lambda: kueue.sync() is None and held in [w.job for w in kueue.workloads.values()],
                   what="a Workload for the unlabelled Job")
        assert suspended(apiserver, held) and kueue.did("admitted") == []
        batch.patch_namespaced_job(held, NAMESPACE, {"spec": {"suspend": False}},
                                   _content_type="application/merge-patch+json")
        wait_until(lambda: kueue.did("resuspended") == [held], what="a manual unsuspend reverted")
        assert suspended(apiserver, held)
