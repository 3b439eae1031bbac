"""The Helm chart: lint, schema, Kubernetes validation of every rendered document (and of every Job
spec the controller creates), and what the controller and the cluster rely on (specs, suspend,
labels, annotations, Kueue, podFailurePolicy, security, GPUs, multi-node, RBAC, secrets, monitoring).

Needs helm in .tools/bin (``bash .ci/install-tools.sh``); the tests fail, not skip, without it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.charts.render import (
    CHART,
    CI_VALUES,
    REPO_ROOT,
    HelmError,
    helm_missing,
    lint,
    notes,
    render,
    stage_jobs,
)
from text2sql_core.graph import STEPS

STEP_NAMES = [s.name for s in STEPS]
K8S_VERSIONS = ["1.29.0", "1.35.0"]
#: CRDs have no schema in kubernetes-validate: only the Prometheus Operator's are expected here
CRD_GROUPS = ("monitoring.coreos.com/",)
CRD_KINDS = {"PodMonitor", "PrometheusRule"}
CASES = {
    "default": {},
    "whole-run": {"values_files": [CI_VALUES / "whole-run-values.yaml"]},
    "single-stage": {"set_values": ["stage=sft"]},
    "single-stage-ci": {"values_files": [CI_VALUES / "single-stage-values.yaml"]},
    "multi-gpu": {"values_files": [CI_VALUES / "multi-gpu-values.yaml"]},
    "multi-node": {"values_files": [CI_VALUES / "multi-node-values.yaml"]},
    "custom-resources": {"values_files": [CI_VALUES / "custom-resources-values.yaml"]},
    "kueue": {"values_files": [CI_VALUES / "kueue-values.yaml"]},
    "kueue-single-stage": {"values_files": [CI_VALUES / "kueue-values.yaml"], "set_values": ["stage=rl"]},
    "manual": {"set_values": ["controller.enabled=false"]},
}


@pytest.fixture(scope="module", autouse=True)
def _helm_installed() -> None:
    problem = helm_missing()
    if problem:
        pytest.fail(problem)


@cache
def _rendered(case: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(**CASES[case]))


def docs(case: str) -> list[dict[str, Any]]:
    # deep copy through JSON: a test may not mutate the cached render of another
    return json.loads(json.dumps(list(_rendered(case))))


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def spec_map(documents: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The ConfigMap of Job specs the controller creates the stage Jobs from (None when not rendered)."""
    found = [d for d in by_kind(documents, "ConfigMap")
             if d["metadata"]["labels"].get("app.kubernetes.io/component") == "stage-specs"]
    assert len(found) <= 1
    return found[0] if found else None


def spec_jobs(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cm = spec_map(documents)
    return [yaml.safe_load(text) for _, text in sorted((cm or {}).get("data", {}).items())]


def run_config_map(documents: list[dict[str, Any]]) -> dict[str, Any]:
    (cm,) = [d for d in by_kind(documents, "ConfigMap") if d["metadata"]["name"].endswith("-config")]
    return cm


def jobs_by_step(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {j["metadata"]["labels"]["text2sql-rlhf.dev/stage"]: j for j in stage_jobs(documents)}


def container(job: dict[str, Any]) -> dict[str, Any]:
    (c,) = job["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def render_fails(values: dict[str, Any] | None = None, **kwargs: Any) -> str:
    with pytest.raises(HelmError) as exc:
        render(values, **kwargs)
    return str(exc.value)


# ---- lint and Kubernetes schemas ------------------------------------------------------------------

@pytest.mark.parametrize("values_file", [None, *sorted(p.name for p in CI_VALUES.glob("*-values.yaml"))])
def test_helm_lint_strict(values_file: str | None) -> None:
    proc = lint(values_files=[CI_VALUES / values_file] if values_file else [])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_every_ci_values_file_is_a_render_case() -> None:
    covered = {str(f) for case in CASES.values() for f in case.get("values_files", [])}
    assert {str(p) for p in CI_VALUES.glob("*-values.yaml")} <= covered


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_document_passes_kubernetes_validate_strict(case: str, version: str) -> None:
    """Strict: unknown fields fail too, in the Job specs the controller creates as well. CRDs (PodMonitor,
    PrometheusRule) have no schema there and are skipped by group."""
    checked = 0
    for doc in docs(case) + spec_jobs(docs(case)):
        where = f"{doc['kind']}/{doc['metadata']['name']} ({case}, Kubernetes {version})"
        if doc["apiVersion"].startswith(CRD_GROUPS):
            assert doc["kind"] in CRD_KINDS, f"unexpected CRD {where}"
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where} is invalid at {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{where}: {exc.message}")
        checked += 1
    assert checked >= 2


def test_kubernetes_validate_cli_accepts_the_rendered_kinds(tmp_path) -> None:
    """The same check through the command line (`kubernetes-validate --strict -k 1.29.0 -k 1.35.0`) on two
    cases that hold every kind the chart renders (the CLI is slow: the Python API covers all cases)."""
    files = []
    for case in ("kueue", "multi-node"):
        path = tmp_path / f"{case}.yaml"
        rendered = docs(case) + spec_jobs(docs(case))
        path.write_text(yaml.safe_dump_all([d for d in rendered if not d["apiVersion"].startswith(CRD_GROUPS)]))
        files.append(str(path))
    cli = Path(sys.executable).parent / "kubernetes-validate"
    args = [str(cli), "--strict", "--quiet", *(f for v in K8S_VERSIONS for f in ("-k", v)), *files]
    proc = subprocess.run(args, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARN" not in proc.stdout  # every kind had a schema


def test_kubernetes_validate_catches_a_broken_job() -> None:
    """The validation above is not vacuous: a misspelt field of a rendered Job is rejected."""
    job = jobs_by_step(docs("default"))["sft"]
    job["spec"]["podFailurePolicy"]["rules"][0]["onExitCode"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, "1.29.0", strict=True)


# ---- whole run ------------------------------------------------------------------------------------

def test_whole_run_renders_every_step_as_a_spec_for_the_controller_to_create() -> None:
    """No Job is rendered: the controller creates each from the spec ConfigMap, unsuspended without Kueue
    (nobody ever flips spec.suspend)."""
    documents = docs("whole-run")
    assert by_kind(documents, "Job") == []
    cm = spec_map(documents)
    assert sorted(cm["data"]) == sorted(f"{s}.yaml" for s in STEP_NAMES)
    assert cm["metadata"]["name"] == "t2s-text2sql-rlhf-spider-r1-stages"
    assert cm["metadata"]["labels"]["text2sql-rlhf.dev/run-id"] == "spider-r1"
    by_step = jobs_by_step(documents)
    for step in STEP_NAMES:
        assert by_step[step]["spec"]["suspend"] is False, step
        assert not any(k.startswith("kueue.x-k8s.io/") for k in by_step[step]["metadata"]["labels"])


def test_the_controller_reads_the_rendered_specs() -> None:
    """The chart's spec ConfigMap parsed by the controller's own code: every step, nothing refused."""
    from text2sql_core.k8s.decide import spec_source, specs_selector

    cm = spec_map(docs("kueue"))
    src = spec_source(cm, "spider-r1")
    assert src.problems == ()
    assert [s.step for s in sorted(src.specs, key=lambda s: s.order)] == STEP_NAMES
    for key_value in specs_selector("spider-r1").split(","):  # the controller finds it by these labels
        key, _, value = key_value.partition("=")
        assert cm["metadata"]["labels"][key] == value


def test_manual_chaining_renders_every_job_suspended_but_prepare() -> None:
    documents = docs("manual")
    assert spec_map(documents) is None and not by_kind(documents, "Deployment")
    by_step = {j["metadata"]["labels"]["text2sql-rlhf.dev/stage"]: j for j in by_kind(documents, "Job")}
    assert sorted(by_step) == sorted(STEP_NAMES)
    for step in STEP_NAMES:
        assert by_step[step]["spec"]["suspend"] is (step != "prepare"), step


# ---- Kueue ----------------------------------------------------------------------------------------

def test_kueue_labels_every_stage_job_and_creates_it_suspended() -> None:
    by_step = jobs_by_step(docs("kueue"))
    assert sorted(by_step) == sorted(STEP_NAMES)
    for step, job in by_step.items():
        labels = job["metadata"]["labels"]
        queue, priority = {"prepare": ("cpu", None), "rl": ("gpu", "training-high")}.get(step, ("gpu", "training"))
        assert labels["kueue.x-k8s.io/queue-name"] == queue, step
        assert labels.get("kueue.x-k8s.io/priority-class") == priority, step
        assert job["spec"]["suspend"] is True, step  # Kueue unsuspends it on admission
        # evictions and preemptions never use up the retries
        assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in \
            job["spec"]["podFailurePolicy"]["rules"]


def test_kueue_off_for_one_step_and_for_a_single_stage() -> None:
    by_step = jobs_by_step(render({"kueue": {"enabled": True, "queueName": "gpu",
                                             "stages": {"prepare": {"enabled": False}}}}))
    assert "kueue.x-k8s.io/queue-name" not in by_step["prepare"]["metadata"]["labels"]
    assert by_step["prepare"]["spec"]["suspend"] is False
    assert by_step["sft"]["spec"]["suspend"] is True
    (job,) = by_kind(docs("kueue-single-stage"), "Job")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu" and job["spec"]["suspend"] is True


@pytest.mark.parametrize(("values", "expected"), [
    ({"kueue": {"enabled": True}}, "kueue.enabled is true but step prepare has no queue"),
    ({"kueue": {"enabled": True, "queueName": "gpu"}, "controller": {"enabled": False}},
     "kueue.enabled needs controller.enabled"),
    ({"kueue": {"stages": {"finetune": {}}}}, "kueue.stages.finetune: no such step"),
    ({"kueue": {"queueName": "Not A Queue"}}, "/kueue/queueName"),
    ({"kueue": {"stages": {"sft": {"queue": "gpu"}}}}, "additional properties 'queue' not allowed"),
])
def test_kueue_values_are_checked(values: dict[str, Any], expected: str) -> None:
    assert expected in render_fails(values)


def test_job_annotations_match_the_run_graph() -> None:
    """order and depends-on are what the controller chains the Jobs by: they mirror text2sql_core.graph."""
    by_step = jobs_by_step(docs("whole-run"))
    for index, step in enumerate(STEPS):
        ann = by_step[step.name]["metadata"]["annotations"]
        assert ann["text2sql-rlhf.dev/order"] == str(index)
        assert ann["text2sql-rlhf.dev/depends-on"] == ",".join(step.inputs)
        assert ann["text2sql-rlhf.dev/kind"] == step.kind


def test_job_names_carry_release_run_id_and_step() -> None:
    by_step = jobs_by_step(docs("whole-run"))
    for step, job in by_step.items():
        assert job["metadata"]["name"] == f"t2s-text2sql-rlhf-spider-r1-{step.replace('_', '-')}"
    other_run = jobs_by_step(render({"runId": "spider-r2"}))
    assert {j["metadata"]["name"] for j in other_run.values()}.isdisjoint(
        j["metadata"]["name"] for j in jobs_by_step(docs("default")).values())


def test_labels_recommended_plus_run_id_and_stage() -> None:
    documents = docs("whole-run")
    for doc in documents:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "text2sql-rlhf"
        assert labels["app.kubernetes.io/instance"] == "t2s"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "text2sql-rlhf"
        assert labels["text2sql-rlhf.dev/run-id"] == "spider-r1"
    for step, job in jobs_by_step(documents).items():
        for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
            assert labels["app.kubernetes.io/component"] == "stage"
            assert labels["text2sql-rlhf.dev/stage"] == step
            assert labels["text2sql-rlhf.dev/run-id"] == "spider-r1"
    (deploy,) = by_kind(documents, "Deployment")
    assert deploy["metadata"]["labels"]["app.kubernetes.io/component"] == "controller"
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deploy["spec"]["template"]["metadata"]["labels"].items()


def test_pod_failure_policy_fails_on_bad_input_and_ignores_disruptions() -> None:
    for step, job in jobs_by_step(docs("whole-run")).items():
        spec = job["spec"]
        rules = spec["podFailurePolicy"]["rules"]
        assert {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2]}} in rules, step
        assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
        # podFailurePolicy requires restartPolicy Never
        assert spec["template"]["spec"]["restartPolicy"] == "Never"
        assert spec["backoffLimit"] == 3
        assert spec["activeDeadlineSeconds"] == 172800
        assert "ttlSecondsAfterFinished" not in spec


def test_stage_command_config_and_env() -> None:
    documents = docs("whole-run")
    cm = run_config_map(documents)
    run_config = yaml.safe_load(cm["data"]["run.yaml"])
    assert run_config["run_id"] == "spider-r1"
    assert run_config["store"]["s3"]["bucket"] == "text2sql-rlhf"
    for step, job in jobs_by_step(documents).items():
        c = container(job)
        assert c["command"] == ["t2s", "stage", "run", step, "--config", "/etc/t2s/run.yaml"]
        env = env_of(c)
        assert env["T2S_RUN_ID"]["value"] == "spider-r1"
        assert env["T2S_STAGE"]["value"] == step
        assert env["T2S_LOG_FORMAT"]["value"] == "json"
        assert env["T2S_METRICS_PORT"]["value"] == "9400"
        for var, path in (("HF_HOME", "/cache/"), ("TRITON_CACHE_DIR", "/cache/"), ("XDG_CACHE_HOME", "/cache/")):
            assert env[var]["value"].startswith(path)
        assert {"name": "metrics", "containerPort": 9400} in c["ports"]
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts["/etc/t2s"]["readOnly"] is True
        volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
        assert volumes[mounts["/etc/t2s"]["name"]]["configMap"]["name"] == cm["metadata"]["name"]


@pytest.mark.parametrize("case", ["whole-run", "multi-node"])
def test_security_context_non_root_read_only_no_capabilities(case: str) -> None:
    documents = docs(case)
    pods = [j["spec"]["template"]["spec"] for j in stage_jobs(documents)]
    pods += [d["spec"]["template"]["spec"] for d in by_kind(documents, "Deployment")]
    assert len(pods) == len(STEP_NAMES) + 1
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
    for job in stage_jobs(documents):
        pod = job["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container(job)["volumeMounts"]}
        for path in ("/tmp", "/cache", "/dev/shm", "/work"):
            assert "emptyDir" in mounts[path], path
        assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"


def test_gpu_limits_and_tolerations_only_on_gpu_steps() -> None:
    by_step = jobs_by_step(docs("whole-run"))
    gpu_steps = {"sft", "predict_sft", "rm_data", "rm", "rl", "predict_rl"}
    for step, job in by_step.items():
        limits = container(job)["resources"].get("limits", {})
        tolerations = job["spec"]["template"]["spec"].get("tolerations", [])
        if step in gpu_steps:
            assert limits["nvidia.com/gpu"] == 1, step
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
        else:
            assert "nvidia.com/gpu" not in limits, step
            assert tolerations == [], step


def test_controller_deployment() -> None:
    documents = docs("whole-run")
    (deploy,) = by_kind(documents, "Deployment")
    assert deploy["metadata"]["name"] == "t2s-text2sql-rlhf-spider-r1-controller"
    assert deploy["spec"]["replicas"] == 1
    pod = deploy["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["t2s", "controller", "--namespace", "$(POD_NAMESPACE)", "--run-id", "spider-r1",
                            "--config", "/etc/t2s/run.yaml"]
    assert env_of(c)["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert c["image"] == "text2sql-rlhf/controller:0.1.0"
    assert {"name": "metrics", "containerPort": 8080} in c["ports"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    (sa,) = by_kind(documents, "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]


def test_controller_rbac_is_limited_to_jobs_and_events() -> None:
    documents = docs("whole-run")
    (role,) = by_kind(documents, "Role")
    assert not by_kind(documents, "ClusterRole") and not by_kind(documents, "ClusterRoleBinding")
    granted = {(group, resource, verb)
               for rule in role["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}
    expected = {("batch", "jobs", v) for v in ("get", "list", "watch", "create", "patch")}
    expected |= {("", "configmaps", "list")}  # the run's Job specs, found by label
    expected |= {("", "pods", "list")}  # a disrupted pod shows its stage as preempted
    expected |= {(g, "events", v) for g in ("", "events.k8s.io") for v in ("create", "patch")}
    expected |= {("", "events", "list")}  # a restarted controller reads the Events it recorded
    assert granted == expected
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}  # no resourceNames or nonResourceURLs
    (binding,) = by_kind(documents, "RoleBinding")
    (sa,) = by_kind(documents, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "ml"}]


def _controller_api_calls() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every Kubernetes API call in the controller's source."""
    source = (REPO_ROOT / "text2sql_core" / "k8s" / "controller.py").read_text()
    groups = {"batch": "batch", "core": ""}
    verbs = {"list": "list", "read": "get", "patch": "patch", "create": "create", "delete": "delete",
             "replace": "update"}
    calls = set()
    for api, verb, kind in re.findall(r"self\.(batch|core)\.(\w+?)_namespaced_(\w+?)\b", source):
        calls.add((groups[api], kind.replace("_", "") + "s", verbs[verb]))
    for api, verb, kind in re.findall(r"\.stream\(\s*self\.(batch|core)\.(list)_namespaced_(\w+?)\b", source):
        calls.add((groups[api], kind + "s", "watch"))
    return calls


def test_role_allows_every_api_call_the_controller_makes() -> None:
    calls = _controller_api_calls()
    assert {("batch", "jobs", "watch"), ("batch", "jobs", "create"), ("", "configmaps", "list")} <= calls
    (role,) = by_kind(docs("whole-run"), "Role")
    granted = {(group, resource, verb)
               for rule in role["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}
    assert calls <= granted, f"the controller calls the API without permission: {sorted(calls - granted)}"


def test_s3_keys_come_from_the_existing_secret_and_are_never_rendered() -> None:
    documents = docs("whole-run")
    assert not by_kind(documents, "Secret")
    pods = [j["spec"]["template"]["spec"] for j in stage_jobs(documents)]
    pods += [d["spec"]["template"]["spec"] for d in by_kind(documents, "Deployment")]
    for pod in pods:
        env = env_of(pod["containers"][0])
        for var, key in (("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"), ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
                         ("AWS_SESSION_TOKEN", "AWS_SESSION_TOKEN")):
            assert env[var] == {"name": var, "valueFrom": {"secretKeyRef": {"name": "text2sql-rlhf-s3", "key": key}}}
    # the default names no Secret: no key variables at all (workload identity, or keys provided otherwise)
    for job in stage_jobs(docs("default")):
        assert not any(name.startswith("AWS_") for name in env_of(container(job)))


def test_s3_variable_names_follow_the_run_config() -> None:
    documents = render({"store": {"s3": {"existingSecret": "creds"}},
                        "runConfig": {"store": {"s3": {"access_key_env": "MINIO_USER",
                                                       "secret_key_env": "MINIO_PASSWORD"}}}})
    env = env_of(container(jobs_by_step(documents)["sft"]))
    assert env["MINIO_USER"]["valueFrom"]["secretKeyRef"] == {"name": "creds", "key": "AWS_ACCESS_KEY_ID"}
    assert env["MINIO_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "creds", "key": "AWS_SECRET_ACCESS_KEY"}


def test_schema_refuses_s3_keys_in_values() -> None:
    message = render_fails({"store": {"s3": {"existingSecret": "creds", "secretAccessKey": "abc"}}})
    assert "secretAccessKey" in message


def test_pod_monitor_behind_a_flag() -> None:
    assert not by_kind(docs("default"), "PodMonitor")
    (pm,) = by_kind(docs("whole-run"), "PodMonitor")
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    selector = pm["spec"]["selector"]["matchLabels"]
    documents = docs("whole-run")
    pods = [j["spec"]["template"] for j in stage_jobs(documents)]
    pods += [d["spec"]["template"] for d in by_kind(documents, "Deployment")]
    for pod in pods:  # every stage pod and the controller are scraped, each on its "metrics" port
        assert selector.items() <= pod["metadata"]["labels"].items()
        assert any(p["name"] == "metrics" for p in pod["spec"]["containers"][0]["ports"])


# ---- single stage ---------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["single-stage", "single-stage-ci"])
def test_single_stage_renders_one_unsuspended_job_and_no_controller(case: str) -> None:
    documents = docs(case)
    kinds = sorted(d["kind"] for d in documents)
    assert kinds == ["ConfigMap", "Job"]
    (job,) = by_kind(documents, "Job")
    assert job["metadata"]["labels"]["text2sql-rlhf.dev/stage"] == "sft"
    assert job["spec"]["suspend"] is False
    assert container(job)["command"][:4] == ["t2s", "stage", "run", "sft"]


def test_single_stage_install_name_from_the_readme() -> None:
    """`helm install sft charts/text2sql-rlhf --set stage=sft`."""
    (job,) = by_kind(render(set_values=["stage=sft"], release="sft"), "Job")
    assert job["metadata"]["name"] == "sft-text2sql-rlhf-demo-sft"


# ---- multi-GPU and multi-node ---------------------------------------------------------------------

def test_multi_gpu_runs_torchrun_with_one_process_per_gpu() -> None:
    by_step = jobs_by_step(docs("multi-gpu"))
    for step, gpus in (("sft", 4), ("rm", 2), ("rl", 8)):
        c = container(by_step[step])
        assert c["command"] == ["t2s", "torchrun", f"--nproc-per-node={gpus}", "--", "stage", "run",
                                step, "--config", "/etc/t2s/run.yaml"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert "completionMode" not in by_step[step]["spec"]
        # the config is validated before one process per GPU starts
        (init,) = by_step[step]["spec"]["template"]["spec"]["initContainers"]
        assert init["command"] == ["t2s", "config", "validate", "/etc/t2s/run.yaml"]
        assert init["image"] == c["image"]
        assert init["securityContext"]["readOnlyRootFilesystem"] is True
    single = by_step["predict_sft"]  # one GPU: no launcher, the stage's own exit code reaches the Job
    assert container(single)["command"][0] == "t2s"
    assert "initContainers" not in single["spec"]["template"]["spec"]


def test_multi_node_is_an_indexed_job_with_a_headless_service() -> None:
    documents = docs("multi-node")
    by_step = jobs_by_step(documents)
    services = {s["metadata"]["name"]: s for s in by_kind(documents, "Service")}
    for step, nodes in (("sft", 2), ("rl", 4)):
        job = by_step[step]
        name = job["metadata"]["name"]
        spec = job["spec"]
        assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", nodes, nodes)
        pod = spec["template"]["spec"]
        svc = services[name]
        assert pod["subdomain"] == name
        assert svc["spec"]["clusterIP"] == "None"
        assert svc["spec"]["publishNotReadyAddresses"] is True
        assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
        c = container(job)
        assert c["command"] == ["t2s", "torchrun", "--nproc-per-node=8", f"--nnodes={nodes}",
                                "--node-rank=$(JOB_COMPLETION_INDEX)", f"--master-addr={name}-0.{name}",
                                "--master-port=29400", "--", "stage", "run", step,
                                "--config", "/etc/t2s/run.yaml"]
        assert {"name": "rendezvous", "containerPort": 29400} in c["ports"]
        assert svc["spec"]["ports"] == [{"name": "rendezvous", "port": 29400, "targetPort": "rendezvous"}]
    assert set(services) == {by_step["sft"]["metadata"]["name"], by_step["rl"]["metadata"]["name"]}
    assert env_of(container(by_step["rl"]))["NCCL_DEBUG"]["value"] == "WARN"


def test_multi_node_needs_gpus() -> None:
    message = render_fails({"stages": {"sft": {"gpus": 0, "nodes": 2}}})
    assert "stages.sft.nodes is 2 but gpus is 0" in message


# ---- custom resources and scheduling --------------------------------------------------------------

def test_custom_resources_and_scheduling() -> None:
    documents = docs("custom-resources")
    by_step = jobs_by_step(documents)
    assert "evaluate_rl" not in by_step
    sft = by_step["sft"]
    pod = sft["spec"]["template"]["spec"]
    c = container(sft)
    assert c["resources"] == {"requests": {"cpu": "16", "memory": "120Gi", "ephemeral-storage": "200Gi"},
                              "limits": {"memory": "160Gi", "amd.com/gpu": 2}}
    assert c["image"] == ("registry.example.com/ml/text2sql-rlhf-train@sha256:"
                          "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "p5.48xlarge"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "training",
                                   "effect": "NoSchedule"}]
    assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert pod["priorityClassName"] == "training-high"
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert sft["spec"]["template"]["metadata"]["labels"]["team"] == "nlp"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["work"]["emptyDir"]["sizeLimit"] == "500Gi"
    assert volumes["dshm"]["emptyDir"]["sizeLimit"] == "32Gi"
    # stageDefaults reach the steps that do not override them
    prepare = by_step["prepare"]
    assert prepare["spec"]["template"]["spec"]["priorityClassName"] == "batch-low"
    assert prepare["spec"]["template"]["spec"]["nodeSelector"] == {"node.kubernetes.io/instance-type": "m7i.4xlarge"}
    assert container(prepare)["image"] == "registry.example.com/ml/text2sql-rlhf-train:0.1.0"
    for job in by_step.values():
        assert job["spec"]["backoffLimit"] == 1
        assert job["spec"]["ttlSecondsAfterFinished"] == 86400
        assert "activeDeadlineSeconds" not in job["spec"]
    # an existing ServiceAccount: none created, the Deployment and RoleBinding use the given name
    assert not by_kind(documents, "ServiceAccount")
    (deploy,) = by_kind(documents, "Deployment")
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "t2s-controller"
    assert by_kind(documents, "RoleBinding")[0]["subjects"][0]["name"] == "t2s-controller"


def test_disabled_upstream_step_fails_the_render() -> None:
    message = render_fails({"stages": {"rm": {"enabled": False}}})
    assert "step rl is enabled but the step it depends on, rm, is disabled" in message
    # disabling the whole tail is fine
    steps = jobs_by_step(render({"stages": {s: {"enabled": False} for s in ("rm_data", "rm", "rl", "predict_rl",
                                                                            "evaluate_rl", "export")}}))
    assert sorted(steps) == ["evaluate_sft", "predict_sft", "prepare", "sft"]


# ---- names and values checks ----------------------------------------------------------------------

def test_too_long_job_name_fails_instead_of_truncating() -> None:
    message = render_fails(release="a-rather-long-release-name-for-a-team")
    assert "is 64 characters, more than 63" in message and "use a shorter release name" in message


def test_multi_node_keeps_room_for_pod_hostnames() -> None:
    # 62 characters fit a single-pod Job but not its "<name>-<index>" pod hostnames
    release = "r" * (62 - len("-text2sql-rlhf-demo-sft"))
    render({"stages": {"sft": {"gpus": 1}}}, release=release, set_values=["stage=sft"])
    message = render_fails({"stages": {"sft": {"gpus": 1, "nodes": 2}}}, release=release, set_values=["stage=sft"])
    assert "more than 61" in message


@pytest.mark.parametrize(("values", "expected"), [
    ({"stages": {"sft": {"gpu": 2}}}, "additional properties 'gpu' not allowed"),
    ({"bogus": True}, "additional properties 'bogus' not allowed"),
    ({"stages": {"sft": {"gpus": "two"}}}, "/stages/sft/gpus"),
    ({"stageDefaults": {"backoffLimit": -1}}, "/stageDefaults/backoffLimit"),
    ({"stage": "train"}, "/stage"),
    ({"runId": "Bad_Run"}, "/runId"),
    ({"metrics": {"podMonitor": {"enabled": "yes"}}}, "/metrics/podMonitor/enabled"),
    ({"stages": {"finetune": {}}}, "additional properties 'finetune' not allowed"),
])
def test_schema_rejects_unknown_keys_and_mistyped_values(values: dict[str, Any], expected: str) -> None:
    assert expected in render_fails(values)


def test_schema_rejects_mistyped_value_in_helm_lint(tmp_path) -> None:
    bad = tmp_path / "bad-values.yaml"
    bad.write_text("controller:\n  port: \"80\"\n")
    proc = lint(values_files=[bad])
    assert proc.returncode != 0
    assert "/controller/port" in proc.stdout + proc.stderr


def test_run_config_is_validated_by_the_schema() -> None:
    message = render_fails({"runConfig": {"no_such_section": {}}})
    assert "no_such_section" in message


def test_local_store_is_refused() -> None:
    message = render_fails({"runConfig": {"store": {"kind": "local"}}})
    assert "runConfig.store.kind must be s3" in message


def test_every_schema_property_has_a_description() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    missing: list[str] = []

    def walk(node: Any, path: str) -> None:
        if not isinstance(node, dict):
            return
        for name, sub in node.get("properties", {}).items():
            if "description" not in sub:
                missing.append(f"{path}.{name}")
            walk(sub, f"{path}.{name}")

    walk(schema, "")
    for name, sub in schema["definitions"].items():
        walk(sub, f"definitions.{name}")
    assert not missing


def test_values_yaml_comments_every_key() -> None:
    """Every key of values.yaml has a comment line above it, except inside Kubernetes objects given as
    defaults (security contexts, tolerations, resources), whose fields are Kubernetes' own, and the
    stages.<step> overrides, whose keys are documented under stageDefaults."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    assert lines[0] == "# yaml-language-server: $schema=values.schema.json"
    k8s_objects = {"podSecurityContext", "securityContext", "gpuTolerations", "resources"}
    uncommented = []
    parents: list[tuple[int, str]] = []  # (indent, key) of the enclosing keys
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(stripped)
        while parents and parents[-1][0] >= indent:
            parents.pop()
        if stripped.startswith("-") or ":" not in stripped:
            continue
        key = stripped.split(":", 1)[0]
        inside_k8s = any(p in k8s_objects for _, p in parents)
        # stages.<step>.<key> repeats a key documented under stageDefaults
        step_override = len(parents) >= 2 and parents[0][1] == "stages"
        if not (inside_k8s or step_override) and not lines[i - 1].lstrip().startswith("#"):
            uncommented.append(f"line {i + 1}: {line.strip()}")
        parents.append((indent, key))
    assert not uncommented


def test_committed_schema_matches_the_run_config_models() -> None:
    proc = subprocess.run([sys.executable, str(CHART / "hack" / "gen-schema.py"), "--check"],
                          check=False, capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr


def test_notes_tell_how_to_watch_the_run() -> None:
    whole = notes({"runId": "spider-r1"})
    assert "deploy/t2s-text2sql-rlhf-spider-r1-controller" in whole
    assert "text2sql-rlhf.dev/run-id=spider-r1" in whole
    single = notes(set_values=["stage=sft"], release="sft")
    assert "Job sft-text2sql-rlhf-demo-sft" in single and "controller" not in single
    manual = notes({"controller": {"enabled": False}})
    assert "patch job" in manual
    assert "patch job" not in whole and "t2s-text2sql-rlhf-spider-r1-stages" in whole
    queued = notes({"kueue": {"enabled": True, "queueName": "gpu"}})
    assert 'LocalQueue "gpu"' in queued and "preempted" in queued


def test_rendered_run_config_is_a_valid_run_config() -> None:
    from text2sql_core.config import parse_run_config

    for case in CASES:
        cm = run_config_map(docs(case))
        cfg = parse_run_config(yaml.safe_load(cm["data"]["run.yaml"]), source=f"{case} ConfigMap")
        assert cfg.run_id in ("demo", "spider-r1")
        assert cfg.store.kind == "s3" and cfg.workdir == "/work"


def test_argocd_application_renders_and_needs_no_ignore_differences() -> None:
    """Argo CD manages the spec ConfigMap, not the Jobs the controller creates from it: nothing to ignore."""
    app = yaml.safe_load((REPO_ROOT / "docs" / "argocd-application.yaml").read_text())
    assert app["kind"] == "Application"
    source = app["spec"]["source"]
    assert (REPO_ROOT / source["path"] / "Chart.yaml").is_file()
    assert "ignoreDifferences" not in app["spec"]
    documents = render(source["helm"]["valuesObject"], release=source["helm"]["releaseName"])
    assert by_kind(documents, "Job") == []
    by_step = jobs_by_step(documents)
    run_id = source["helm"]["valuesObject"]["runId"]
    assert all(run_id in j["metadata"]["name"] for j in by_step.values())
    assert sorted(by_step) == sorted(STEP_NAMES)
    assert all(j["spec"]["suspend"] is True for j in by_step.values())  # Kueue admits them
    assert {d["kind"] for d in documents} >= {"PrometheusRule", "PodMonitor"}
