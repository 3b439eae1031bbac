"""A fake kubelet for the simulated-cluster test: runs the containers of a namespace's Jobs and
Deployments as local subprocesses, and reports Job status to the fake API server.

It plays the Job controller and the kubelet together, for what the chart renders: one container
per pod, ``completions: 1``. A Job gets a pod once it is unsuspended; exit code 0 makes it
Complete, another code is retried up to ``backoffLimit`` unless ``podFailurePolicy`` fails the Job
at once (exit code 2 of the stage container); an evicted pod (``disrupt``) is replaced without
counting when the policy ignores ``DisruptionTarget``. A Job suspended while its pod runs (Kueue's
preemption) has the pod terminated (SIGTERM, as a pod deletion does), which counts as no failure;
a new pod starts when the Job is unsuspended again. A Deployment's pod runs until the kubelet
stops and is restarted when it exits.

What a real node does with namespaces is simulated with paths:

* each volume (ConfigMap, Secret, emptyDir) is a directory of the pod; a ``mountPath`` that
  appears in the command, the environment, ``workingDir`` or a file projected from a ConfigMap is
  rewritten to that directory (the run config says ``workdir: /work``, for instance);
* the image's ``t2s`` entrypoint is this interpreter with the checkout on ``PYTHONPATH``;
* ``$(VAR)`` in command and args is expanded from the container's env, as Kubernetes does;
  ``secretKeyRef``, ``configMapKeyRef`` and ``fieldRef`` (namespace, pod name) are resolved;
* pods share the host network, so ``T2S_METRICS_PORT`` is set to a free port of the host
  (``Pod.metrics_port``; ``metrics_targets()`` lists the running pods' endpoints for a Prometheus);
* a pod with ``automountServiceAccountToken: true`` gets ``KUBECONFIG`` pointing at the fake API
  server instead of a mounted service-account token.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.k8s.fake_apiserver import FakeApiServer, set_job_complete, set_job_failed, set_job_running
from tests.servers import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]

__all__ = ["FakeKubelet", "Pod"]


@dataclass
class Pod:
    """One container run: a Job attempt or a Deployment replica."""

    owner_kind: str
    owner: str
    attempt: int
    root: Path
    proc: subprocess.Popen[bytes]
    metrics_port: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    #: terminated because its Job was suspended (preempted), not failed
    stopped: bool = False
    #: evicted (node drain, disruption): the pod gets the DisruptionTarget condition
    disrupted: bool = False
    started: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return f"{self.owner}-{self.attempt}"

    @property
    def log(self) -> Path:
        return self.root / "container.log"


class FakeKubelet:
    def __init__(self, server: FakeApiServer, namespace: str, workdir: Path, *, poll_s: float = 0.1) -> None:
        from kubernetes import client

        self.server = server
        self.namespace = namespace
        self.workdir = Path(workdir)
        self.poll_s = poll_s
        self._api = server.api_client()
        self.batch = client.BatchV1Api(self._api)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = server.write_kubeconfig(self.workdir / "kubeconfig", namespace=namespace)
        self.pods: list[Pod] = []
        self.errors: list[str] = []
        self._active: dict[str, Pod] = {}  # owner uid -> running pod
        self._done: set[str] = set()  # Job uids that finished
        self._attempts: dict[str, int] = {}
        self._failures: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-kubelet", daemon=True)

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeKubelet:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for pod in list(self._active.values()):
            if pod.proc.poll() is None:
                pod.proc.send_signal(signal.SIGTERM)
                try:
                    pod.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pod.proc.kill()
                    pod.proc.wait()
        self._api.close()

    def metrics_targets(self) -> list[tuple[Pod, str]]:
        """(pod, "127.0.0.1:<port>") of every running pod: what a PodMonitor would scrape."""
        return [(p, f"127.0.0.1:{p.metrics_port}") for p in list(self._active.values()) if p.proc.poll() is None]

    def logs(self, owner: str) -> str:
        """Every attempt's output of a Job or Deployment, oldest first."""
        return "\n".join(p.log.read_text(errors="replace") for p in self.pods if p.owner == owner and p.log.exists())

    # ---- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as exc:  # noqa: BLE001 - recorded for the test, which fails on it
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.poll_s)

    def _sync(self) -> None:
        for dep in self.server.objects("deployments", self.namespace, group="apps"):
            uid = dep["metadata"]["uid"]
            pod = self._active.get(uid)
            if pod is None or pod.proc.poll() is not None:
                if pod is not None and time.monotonic() - pod.started < 1.0:
                    continue  # crash-looping: back off a little
                self._run_pod("Deployment", dep, dep["spec"]["template"])
        for job in self.server.objects("jobs", self.namespace, group="batch"):
            uid = job["metadata"]["uid"]
            if uid in self._done:
                continue
            if job["spec"].get("suspend"):
                if uid in self._active:
                    self._stop_pod(job, self._active.pop(uid))
                continue
            pod = self._active.get(uid)
            if pod is None:
                if job["spec"].get("completions", 1) != 1:
                    raise ValueError(f"Job {job['metadata']['name']}: only completions 1 is simulated")
                set_job_running(self.batch, self.namespace, job["metadata"]["name"])
                self._run_pod("Job", job, job["spec"]["template"])
                continue
            code = pod.proc.poll()
            if code is None:
                continue
            del self._active[uid]
            name = job["metadata"]["name"]
            if code == 0:
                self._done.add(uid)
                set_job_complete(self.batch, self.namespace, name)
            elif pod.disrupted and self._ignores_disruptions(job):
                self._run_pod("Job", job, job["spec"]["template"])  # replaced, not counted against backoffLimit
            elif self._fails_job_at_once(job, code) or self._failed_once(uid) > int(job["spec"].get("backoffLimit", 6)):
                self._done.add(uid)
                set_job_failed(self.batch, self.namespace, name,
                               reason="PodFailurePolicy" if self._fails_job_at_once(job, code)
                               else "BackoffLimitExceeded", message=f"container exited with code {code}")
            else:
                self._run_pod("Job", job, job["spec"]["template"])

    def disrupt(self, owner: str) -> Pod:
        """Evict the running pod of Job ``owner`` (as a node drain does: DisruptionTarget, then killed)."""
        pod = next(p for p in list(self._active.values()) if p.owner == owner and p.proc.poll() is None)
        pod.disrupted = True
        pod.proc.kill()
        return pod

    @staticmethod
    def _ignores_disruptions(job: dict[str, Any]) -> bool:
        return any(rule.get("action") == "Ignore" and any(c.get("type") == "DisruptionTarget"
                                                          for c in rule.get("onPodConditions") or ())
                   for rule in (job["spec"].get("podFailurePolicy") or {}).get("rules") or [])

    def _failed_once(self, uid: str) -> int:
        """Count a failed pod of the Job; returns how many failed so far."""
        self._failures[uid] = self._failures.get(uid, 0) + 1
        return self._failures[uid]

    def _stop_pod(self, job: dict[str, Any], pod: Pod) -> None:
        """The Job was suspended: delete its pod (SIGTERM, then SIGKILL after the grace period)."""
        pod.stopped = True
        if pod.proc.poll() is None:
            pod.proc.send_signal(signal.SIGTERM)
            try:
                pod.proc.wait(timeout=int(job["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)))
            except subprocess.TimeoutExpired:
                pod.proc.kill()
                pod.proc.wait()
        self.batch.patch_namespaced_job_status(job["metadata"]["name"], self.namespace,
                                               {"status": {"active": 0, "ready": 0}},
                                               _content_type="application/merge-patch+json")

    @staticmethod
    def _fails_job_at_once(job: dict[str, Any], code: int) -> bool:
        for rule in (job["spec"].get("podFailurePolicy") or {}).get("rules") or []:
            exit_codes = rule.get("onExitCodes")
            if rule.get("action") == "FailJob" and exit_codes and exit_codes.get("operator") == "In" \
                    and code in exit_codes.get("values", []):
                return True
        return False

    # ---- a pod -----------------------------------------------------------------------------

    def _run_pod(self, kind: str, owner: dict[str, Any], template: dict[str, Any]) -> None:
        meta = owner["metadata"]
        attempt = self._attempts[meta["uid"]] = self._attempts.get(meta["uid"], 0) + 1
        pod_name = f"{meta['name']}-{attempt}"
        root = self.workdir / pod_name
        spec = template["spec"]
        (container,) = spec["containers"]
        mounts = self._volumes(root, spec.get("volumes") or [], container.get("volumeMounts") or [])

        def host(text: str) -> str:
            for mount_path, local in mounts:
                if text == mount_path or text.startswith(mount_path.rstrip("/") + "/"):
                    return str(local) + text[len(mount_path.rstrip("/")):]
            return text

        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO_ROOT), "LANG": "C.UTF-8"}
        for item in container.get("env") or []:
            env[item["name"]] = host(self._env_value(item, pod_name))
        port = free_port()
        env["T2S_METRICS_PORT"] = str(port)
        if spec.get("automountServiceAccountToken"):
            env["KUBECONFIG"] = str(self.kubeconfig)

        def expand(arg: str) -> str:
            return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)

        argv = [host(expand(a)) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
        if not argv or argv[0] != "t2s":
            raise ValueError(f"{kind} {meta['name']}: only the t2s entrypoint is simulated, got {argv[:1]}")
        argv = [sys.executable, "-m", "text2sql_core.cli", *argv[1:]]
        cwd = Path(host(container.get("workingDir") or str(root)))
        cwd.mkdir(parents=True, exist_ok=True)
        with (root / "container.log").open("ab") as log:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        labels = dict(((template.get("metadata") or {}).get("labels")) or {})
        pod = Pod(kind, meta["name"], attempt, root, proc, metrics_port=port, labels=labels)
        self.pods.append(pod)
        self._active[meta["uid"]] = pod

    def _volumes(self, root: Path, volumes: list[dict[str, Any]],
                 mounts: list[dict[str, Any]]) -> list[tuple[str, Path]]:
        """Materialise the mounted volumes; returns (mountPath, local dir), longest path first."""
        local: dict[str, Path] = {}
        files: list[Path] = []
        for vol in volumes:
            path = root / "volumes" / vol["name"]
            path.mkdir(parents=True, exist_ok=True)
            local[vol["name"]] = path
            if "configMap" in vol:
                cm = self.server.get_object("configmaps", self.namespace, vol["configMap"]["name"])
                if cm is None:
                    raise ValueError(f"ConfigMap {vol['configMap']['name']} not found")
                for key, text in (cm.get("data") or {}).items():
                    (path / key).write_text(text)
                    files.append(path / key)
            elif "secret" in vol:
                secret = self.server.get_object("secrets", self.namespace, vol["secret"]["secretName"])
                if secret is None:
                    raise ValueError(f"Secret {vol['secret']['secretName']} not found")
                for key, b64 in (secret.get("data") or {}).items():
                    (path / key).write_bytes(base64.b64decode(b64))
            elif "emptyDir" not in vol:
                raise ValueError(f"volume {vol['name']}: only configMap, secret and emptyDir are simulated")
        pairs = sorted(((m["mountPath"], local[m["name"]] / m.get("subPath", "")) for m in mounts),
                       key=lambda p: len(p[0]), reverse=True)
        for projected in files:  # paths inside the pod, in the config files the pod reads
            text = projected.read_text()
            for mount_path, where in pairs:
                text = re.sub(rf"(?<![\w./-]){re.escape(mount_path)}(?=/|\s|$|[\"',])", str(where), text,
                              flags=re.MULTILINE)
            projected.write_text(text)
        return pairs

    def _env_value(self, item: dict[str, Any], pod_name: str) -> str:
        if "value" in item:
            return str(item["value"])
        source = item.get("valueFrom") or {}
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = self.server.get_object("secrets", self.namespace, ref["name"]) or {}
            return base64.b64decode((secret.get("data") or {})[ref["key"]]).decode()
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return ((self.server.get_object("configmaps", self.namespace, ref["name"]) or {}).get("data") or {})[
                ref["key"]]
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            if path == "metadata.namespace":
                return self.namespace
            if path == "metadata.name":
                return pod_name
        raise ValueError(f"env {item.get('name')}: unsupported source {source}")
