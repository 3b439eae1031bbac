"""The fake API server speaks enough Kubernetes for the real client: checked through that client."""

from __future__ import annotations

import threading

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.k8s.conftest import NAMESPACE, stage_job
from tests.k8s.fake_apiserver import FakeApiServer, LabelSelector, json_patch, merge_patch, set_job_complete

MERGE = "application/merge-patch+json"


@pytest.fixture
def core(kube):
    return client.CoreV1Api(kube)


def test_create_get_list_with_label_selectors(batch, core):
    for step, extra in (("prepare", {"tier": "a"}), ("sft", {"tier": "b"}), ("rm", {})):
        batch.create_namespaced_job(NAMESPACE, stage_job("r1", step, 0, (), suspend=True, extra_labels=extra))
    batch.create_namespaced_job("elsewhere", stage_job("r1", "rl", 0, (), suspend=True))

    def names(selector: str) -> list[str]:
        return [j.metadata.labels["text2sql-rlhf.dev/stage"]
                for j in batch.list_namespaced_job(NAMESPACE, label_selector=selector).items]

    assert names("") == ["prepare", "rm", "sft"]
    assert names("tier=a") == names("tier==a") == ["prepare"]
    assert names("tier!=a") == ["rm", "sft"]  # != also matches Jobs without the label
    assert names("tier in (a, b)") == ["prepare", "sft"]
    assert names("tier notin (a),text2sql-rlhf.dev/run-id=r1") == ["rm", "sft"]
    assert names("tier") == ["prepare", "sft"] and names("!tier") == ["rm"]
    assert len(batch.list_job_for_all_namespaces().items) == 4
    job = batch.read_namespaced_job("t2s-r1-sft", NAMESPACE)
    assert job.spec.suspend is True and job.metadata.uid and job.metadata.generation == 1
    with pytest.raises(ApiException) as err:
        batch.list_namespaced_job(NAMESPACE, label_selector="tier in a")
    assert err.value.status == 400
    assert LabelSelector.parse("a in (x),!b").matches({"a": "x"})
    core.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": "cfg"}, "data": {"run.yaml": "run_id: x"}})
    assert core.read_namespaced_config_map("cfg", NAMESPACE).data == {"run.yaml": "run_id: x"}


def test_errors_are_status_objects(batch):
    batch.create_namespaced_job(NAMESPACE, stage_job("r1", "sft", 1, ("prepare",), suspend=True))
    with pytest.raises(ApiException) as err:
        batch.read_namespaced_job("missing", NAMESPACE)
    assert err.value.status == 404 and '"reason": "NotFound"' in err.value.body
    with pytest.raises(ApiException) as err:
        batch.create_namespaced_job(NAMESPACE, stage_job("r1", "sft", 1, ("prepare",), suspend=True))
    assert err.value.status == 409 and '"reason": "AlreadyExists"' in err.value.body
    job = batch.read_namespaced_job("t2s-r1-sft", NAMESPACE)
    job.metadata.labels["edited"] = "yes"
    batch.patch_namespaced_job("t2s-r1-sft", NAMESPACE, {"metadata": {"labels": {"other": "x"}}},
                               _content_type=MERGE)
    with pytest.raises(ApiException) as err:  # replace with a stale resourceVersion
        batch.replace_namespaced_job("t2s-r1-sft", NAMESPACE, job)
    assert err.value.status == 409 and '"reason": "Conflict"' in err.value.body
    bad = stage_job("r1", "rm", 2, ("sft",), suspend=True)
    bad["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    with pytest.raises(ApiException) as err:
        batch.create_namespaced_job(NAMESPACE, bad)
    assert err.value.status == 422 and "restartPolicy" in err.value.body


def test_patches_and_the_status_subresource(batch, apiserver):
    batch.create_namespaced_job(NAMESPACE, stage_job("r1", "sft", 1, ("prepare",), suspend=True))
    name = "t2s-r1-sft"
    before = batch.read_namespaced_job(name, NAMESPACE)
    # a main-resource patch cannot change status; a status patch cannot change spec
    batch.patch_namespaced_job(name, NAMESPACE, {"spec": {"suspend": False}, "status": {"succeeded": 5}},
                               field_manager="tester", _content_type=MERGE)
    batch.patch_namespaced_job_status(name, NAMESPACE, {"spec": {"suspend": True}, "status": {"active": 1}},
                                      _content_type=MERGE)
    after = batch.read_namespaced_job(name, NAMESPACE)
    assert after.spec.suspend is False and after.status.active == 1 and after.status.succeeded is None
    assert after.metadata.generation == before.metadata.generation + 1
    assert int(after.metadata.resource_version) > int(before.metadata.resource_version)
    assert [m.manager for m in after.metadata.managed_fields] == ["tester"]
    # strategic merge (the client's default for dict bodies) is a merge patch here; JSON patch works too
    batch.patch_namespaced_job(name, NAMESPACE, {"metadata": {"annotations": {"a": "1"}}})
    batch.patch_namespaced_job(name, NAMESPACE, [{"op": "add", "path": "/metadata/annotations/b", "value": "2"},
                                                 {"op": "remove", "path": "/metadata/annotations/a"}])
    annotations = batch.read_namespaced_job(name, NAMESPACE).metadata.annotations
    assert annotations["b"] == "2" and "a" not in annotations
    with pytest.raises(ApiException) as err:  # precondition on the resourceVersion in a patch body
        batch.patch_namespaced_job(name, NAMESPACE, {"metadata": {"resourceVersion": before.metadata.resource_version},
                                                     "spec": {"suspend": True}}, _content_type=MERGE)
    assert err.value.status == 409
    set_job_complete(batch, NAMESPACE, name)
    conditions = batch.read_namespaced_job_status(name, NAMESPACE).status.conditions
    assert [c.type for c in conditions] == ["SuccessCriteriaMet", "Complete"]
    batch.delete_namespaced_job(name, NAMESPACE)
    assert apiserver.get_object("jobs", NAMESPACE, name, group="batch") is None


def test_patch_helpers():
    assert merge_patch({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"b": None, "d": 3}, "l": [2]}) == \
        {"a": {"c": 2, "d": 3}, "l": [2]}
    assert json_patch({"a": [1, 2]}, [{"op": "add", "path": "/a/-", "value": 3},
                                      {"op": "move", "from": "/a/0", "path": "/b"}]) == {"a": [2, 3], "b": 1}


def test_events_in_both_api_versions(kube, core):
    core.create_namespaced_event(NAMESPACE, {
        "metadata": {"generateName": "job.", "labels": {"text2sql-rlhf.dev/run-id": "r1"}},
        "involvedObject": {"kind": "Job", "name": "job"}, "reason": "StageStarted", "message": "hello",
        "type": "Normal", "firstTimestamp": "2026-01-01T00:00:00Z"})
    client.EventsV1Api(kube).create_namespaced_event(NAMESPACE, {
        "metadata": {"name": "new-style"}, "regarding": {"kind": "Job", "name": "job"}, "reason": "RunFailed",
        "note": "bye", "type": "Warning", "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "t2s-controller", "reportingInstance": "x", "action": "Fail"})
    core_view = core.list_namespaced_event(NAMESPACE, label_selector="text2sql-rlhf.dev/run-id=r1").items
    assert [(e.reason, e.message, e.involved_object.name) for e in core_view] == [("StageStarted", "hello", "job")]
    new_view = {e.reason: e for e in client.EventsV1Api(kube).list_namespaced_event(NAMESPACE).items}
    assert new_view["StageStarted"].note == "hello" and new_view["StageStarted"].regarding.name == "job"
    assert {e.reason: e.message for e in core.list_namespaced_event(NAMESPACE).items}["RunFailed"] == "bye"


def test_watch_streams_changes_and_selector_transitions(batch):
    listed = batch.list_namespaced_job(NAMESPACE, label_selector="watched=yes")
    seen: list[tuple[str, str]] = []

    def consume():
        for ev in watch.Watch().stream(batch.list_namespaced_job, NAMESPACE, label_selector="watched=yes",
                                       resource_version=listed.metadata.resource_version, timeout_seconds=2):
            seen.append((ev["type"], ev["object"].metadata.name))

    thread = threading.Thread(target=consume)
    thread.start()
    batch.create_namespaced_job(NAMESPACE, stage_job("r1", "sft", 1, (), suspend=True,
                                                     extra_labels={"watched": "yes"}))
    batch.create_namespaced_job(NAMESPACE, stage_job("r1", "rm", 1, (), suspend=True))  # never visible
    batch.patch_namespaced_job("t2s-r1-sft", NAMESPACE, {"spec": {"suspend": False}}, _content_type=MERGE)
    batch.patch_namespaced_job("t2s-r1-sft", NAMESPACE, {"metadata": {"labels": {"watched": "no"}}},
                               _content_type=MERGE)
    batch.patch_namespaced_job("t2s-r1-rm", NAMESPACE, {"metadata": {"labels": {"watched": "yes"}}},
                               _content_type=MERGE)
    thread.join(timeout=10)
    assert seen == [("ADDED", "t2s-r1-sft"), ("MODIFIED", "t2s-r1-sft"), ("DELETED", "t2s-r1-sft"),
                    ("ADDED", "t2s-r1-rm")]


def test_watch_and_list_410_when_history_is_gone():
    with FakeApiServer(history_window=3) as server:
        batch = client.BatchV1Api(server.api_client())
        batch.create_namespaced_job(NAMESPACE, stage_job("r1", "s0", 0, (), suspend=True))
        start = batch.list_namespaced_job(NAMESPACE).metadata.resource_version
        for i in range(1, 5):
            batch.create_namespaced_job(NAMESPACE, stage_job("r1", f"s{i}", i, (), suspend=True))
        with pytest.raises(ApiException) as err:
            list(watch.Watch().stream(batch.list_namespaced_job, NAMESPACE, resource_version=start,
                                      timeout_seconds=2))
        assert err.value.status == 410
        with pytest.raises(ApiException) as err:
            batch.list_namespaced_job(NAMESPACE, resource_version=start, resource_version_match="Exact")
        assert err.value.status == 410
        # inside the window, an exact list reconstructs the past and pagination stays consistent
        now = batch.list_namespaced_job(NAMESPACE).metadata.resource_version
        past = batch.list_namespaced_job(NAMESPACE, resource_version=str(int(now) - 2),
                                         resource_version_match="Exact")
        assert len(past.items) == 3
        page = batch.list_namespaced_job(NAMESPACE, limit=2)
        batch.delete_namespaced_job("t2s-r1-s4", NAMESPACE)
        rest = batch.list_namespaced_job(NAMESPACE, limit=10, _continue=page.metadata.var_continue)
        assert [j.metadata.name for j in page.items + rest.items] == [f"t2s-r1-s{i}" for i in range(5)]
        server.compact()
        with pytest.raises(ApiException) as err:
            batch.list_namespaced_job(NAMESPACE, limit=10, _continue=page.metadata.var_continue)
        assert err.value.status == 410
