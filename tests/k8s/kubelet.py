"""A fake kubelet for the simulated-cluster test: runs the containers of a namespace's Jobs and
Deployments as local subprocesses, and reports Job status to the fake API server.

It plays the Job controller and the kubelet together, for what the chart renders: one container
per pod; ``completions: 1``, or an Indexed Job (``completionMode: Indexed``, ``completions`` =
``parallelism``: a multi-node step) with one pod per completion index. A Job gets its pods once it
is unsuspended; each is a Pod object in the API server too (labels ``batch.kubernetes.io/job-name``
and, for an Indexed Job, ``batch.kubernetes.io/job-completion-index``; an owner reference to the
Job; phase Pending, Running, Succeeded or Failed), as the Job controller and kubelet keep them.
Exit code 0 of every index makes the Job Complete; another code is retried up to ``backoffLimit``
(counted over the Job's pods) unless ``podFailurePolicy`` fails the Job at once (exit code 2 of the
stage container), and a failed Job has its other pods terminated. An evicted pod (``disrupt``) gets
the ``DisruptionTarget`` condition, is terminated and ends in phase Failed; when the policy ignores
``DisruptionTarget`` it is replaced without counting (the replacement can be held Pending, as on a
drained cluster, until ``release``). A Job suspended while its pods run (Kueue's preemption) has
them terminated (SIGTERM, as a pod deletion does), which counts as no failure; new pods start when
the Job is unsuspended again. ``status.active`` (pending or running pods) and ``status.ready``
(running pods) follow the pods. A Deployment's pod runs until the kubelet stops and is restarted
when it exits; it has no Pod object.

What a real node does with namespaces is simulated with paths:

* each volume (ConfigMap, Secret, emptyDir) is a directory of the pod; a ``mountPath`` that
  appears in the command, the environment, ``workingDir`` or a file projected from a ConfigMap is
  rewritten to that directory (the run config says ``workdir: /work``, for instance), so each pod,
  and each node of a multi-node step, has its own workdir;
* the image's ``t2s`` entrypoint is this interpreter with the checkout on ``PYTHONPATH``;
* ``$(VAR)`` in command and args is expanded from the container's env, as Kubernetes does; an
  Indexed Job's pods get ``JOB_COMPLETION_INDEX`` (as the Job controller injects it) and every pod
  ``HOSTNAME`` (``<job>-<index>`` for an Indexed Job's pod, whose ``subdomain`` the template sets);
  ``secretKeyRef``, ``configMapKeyRef`` and ``fieldRef`` (namespace, pod name, a label or an
  annotation) are resolved;
* cluster DNS: a pod's ``<hostname>.<subdomain>`` name (also with ``.<namespace>``, ``.svc`` and
  ``.svc.cluster.local``) exists while the pod exists and a headless Service named after the
  subdomain selects it, as Kubernetes' DNS publishes it; every pod runs on this host, so such a name
  in a command argument or env value is resolved to 127.0.0.1 before the process starts (an
  unresolvable name is left as it is, and fails where a cluster would fail);
* pods share the host network, so ``T2S_METRICS_PORT`` is set to a free port of the host
  (``Pod.metrics_port``; ``metrics_targets()`` lists the running pods' endpoints for a Prometheus);
  another port a pod listens on (torchrun's rendezvous) is what the chart renders: a test sets a
  free one through its values (``distributed.masterPort``);
* a pod with ``automountServiceAccountToken: true`` gets ``KUBECONFIG`` pointing at the fake API
  server instead of a mounted service-account token;
* init containers are not run (the stage container checks its config again itself).

Each pod is its own process group, so terminating it stops every process it started (torchrun's
workers), as stopping a container does.
"""

from __future__ import annotations

import base64
import copy
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

from tests.k8s.fake_apiserver import FakeApiServer, set_job_complete, set_job_failed
from tests.servers import free_port
from text2sql_core.k8s.decide import COMPLETION_INDEX_LABEL, DISRUPTION_TARGET, JOB_NAME_LABEL

REPO_ROOT = Path(__file__).resolve().parents[2]
_MERGE = "application/merge-patch+json"
#: the DisruptionTarget reason and message the API server sets for an Eviction API call (kubectl drain)
EVICTION_REASON = "EvictionByEvictionAPI"
EVICTION_MESSAGE = "Eviction API: evicting"

__all__ = ["EVICTION_MESSAGE", "EVICTION_REASON", "FakeKubelet", "Pod"]


def _done(resp: Any) -> None:
    """Read an un-preloaded response to its end and hand its connection back to the pool."""
    try:
        resp.read()
    finally:
        resp.release_conn()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Pod:
    """One container run: a Job attempt (of one completion index) or a Deployment replica."""

    owner_kind: str
    owner: str
    attempt: int
    root: Path
    name: str
    proc: subprocess.Popen[bytes] | None = None  # None while Pending (not started yet)
    index: int | None = None  # completion index of an Indexed Job's pod
    metrics_port: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    #: terminated because its Job was suspended (preempted), not failed
    stopped: bool = False
    #: evicted (node drain, disruption): the pod got the DisruptionTarget condition
    disrupted: bool = False
    #: started no earlier than this (time.monotonic()); math.inf: held until ``release``
    hold_until: float = 0.0
    #: SIGKILL after this (the grace period of a termination), 0: no termination pending
    kill_at: float = 0.0
    #: command line and environment it was started with (after $(VAR) expansion and DNS resolution)
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @property
    def log(self) -> Path:
        return self.root / "container.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to every process of the pod (its process group)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after ``grace_s`` (a container's termination); waits for the end."""
        self.signal(signal.SIGTERM)
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait()


class FakeKubelet:
    def __init__(self, server: FakeApiServer, namespace: str, workdir: Path, *, poll_s: float = 0.1) -> None:
        from kubernetes import client

        self.server = server
        self.namespace = namespace
        self.workdir = Path(workdir)
        self.poll_s = poll_s
        self._api = server.api_client()
        self.batch = client.BatchV1Api(self._api)
        self.core = client.CoreV1Api(self._api)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = server.write_kubeconfig(self.workdir / "kubeconfig", namespace=namespace)
        self.pods: list[Pod] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()  # the test thread disrupts and releases while the loop runs
        self._active: dict[tuple[str, int | None], Pod] = {}  # (owner uid, index) -> its current pod
        self._done: set[str] = set()  # Job uids that finished
        self._succeeded: dict[str, set[int | None]] = {}  # Job uid -> indexes that succeeded
        self._attempts: dict[tuple[str, int | None], int] = {}
        self._failures: dict[str, int] = {}
        self._replacement_hold: dict[tuple[str, int | None], float] = {}
        self._reported: dict[str, tuple[int, int]] = {}  # Job uid -> (active, ready) last written
        self._objects: dict[str, dict[str, Any]] = {}  # pod name -> the pod as created (spec, labels)
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
            pod.terminate(10)
        self._api.close()

    def metrics_targets(self) -> list[tuple[Pod, str]]:
        """(pod, "127.0.0.1:<port>") of every running pod: what a PodMonitor would scrape."""
        return [(p, f"127.0.0.1:{p.metrics_port}") for p in list(self._active.values()) if p.running]

    def logs(self, owner: str) -> str:
        """Every attempt's output of a Job or Deployment, oldest first."""
        return "\n".join(p.log.read_text(errors="replace") for p in self.pods if p.owner == owner and p.log.exists())

    # ---- what a cluster does to pods -------------------------------------------------------

    def disrupt(self, owner: str, *, index: int | None = None, hold_s: float = 0.0, reason: str = EVICTION_REASON,
                message: str = EVICTION_MESSAGE, grace_s: float = 30.0) -> Pod:
        """Evict the running pod of Job ``owner`` (of completion ``index``), as Kubernetes does: the pod
        gets the ``DisruptionTarget`` condition (``reason``: EvictionByEvictionAPI for a drain,
        PreemptionByScheduler, DeletionByTaintManager, TerminationByKubelet), then SIGTERM and SIGKILL
        after ``grace_s``; it ends in phase Failed. Its replacement stays Pending ``hold_s`` seconds
        (``math.inf``: until ``release``)."""
        with self._lock:
            pod = next(p for p in list(self._active.values())
                       if p.owner == owner and p.running and (index is None or p.index == index))
            pod.disrupted = True
            key = next(k for k, p in self._active.items() if p is pod)
            self._replacement_hold[key] = hold_s
            self._patch_pod_status(pod, {"conditions": [{
                "type": DISRUPTION_TARGET, "status": "True", "reason": reason, "message": message,
                "lastTransitionTime": _now()}]})
            pod.signal(signal.SIGTERM)
            pod.kill_at = time.monotonic() + grace_s
            return pod

    def release(self, owner: str) -> None:
        """Let the held (Pending) pods of ``owner`` start: the drained capacity is back."""
        with self._lock:
            for pod in self._active.values():
                if pod.owner == owner and pod.proc is None:
                    pod.hold_until = 0.0

    # ---- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    self._sync()
            except Exception as exc:  # noqa: BLE001 - recorded for the test, which fails on it
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.poll_s)

    def _sync(self) -> None:
        for dep in self.server.objects("deployments", self.namespace, group="apps"):
            key = (dep["metadata"]["uid"], None)
            pod = self._active.get(key)
            if pod is None or not pod.running:
                if pod is not None and time.monotonic() - pod.started < 1.0:
                    continue  # crash-looping: back off a little
                pod = self._new_pod("Deployment", dep, None)
                self._start_pod(dep, pod)
        for job in self.server.objects("jobs", self.namespace, group="batch"):
            if job["metadata"]["uid"] not in self._done:
                self._sync_job(job)

    def _sync_job(self, job: dict[str, Any]) -> None:
        meta, spec = job["metadata"], job["spec"]
        uid, name = meta["uid"], meta["name"]
        completions = int(spec.get("completions") or 1)
        if spec.get("completionMode") == "Indexed":
            if int(spec.get("parallelism") or 1) != completions:
                raise ValueError(f"Job {name}: an Indexed Job is simulated with parallelism = completions")
            indexes: list[int | None] = list(range(completions))
        elif completions != 1:
            raise ValueError(f"Job {name}: only completions 1 is simulated for a NonIndexed Job")
        else:
            indexes = [None]
        if spec.get("suspend"):
            for index in indexes:
                pod = self._active.pop((uid, index), None)
                if pod is not None:
                    self._stop_pod(job, pod)
            self._report(job)
            return
        succeeded = self._succeeded.setdefault(uid, set())
        for index in indexes:
            key = (uid, index)
            if index in succeeded:
                continue
            pod = self._active.get(key)
            if pod is None:  # created now (Pending), started next pass: every index's DNS name exists by then
                self._active[key] = self._new_pod("Job", job, index)
                continue
            if pod.proc is None:
                if time.monotonic() >= pod.hold_until:
                    self._start_pod(job, pod)
                continue
            code = pod.proc.poll()
            if code is None:
                if pod.kill_at and time.monotonic() > pod.kill_at:
                    pod.signal(signal.SIGKILL)
                continue
            del self._active[key]
            self._patch_pod_status(pod, {"phase": "Succeeded" if code == 0 else "Failed", "containerStatuses": [
                {"name": "stage", "ready": False, "state": {"terminated": {"exitCode": code, "finishedAt": _now()}}}]})
            if code == 0:
                succeeded.add(index)
            elif pod.disrupted and self._ignores_disruptions(job):
                continue  # replaced (next pass), not counted against backoffLimit
            elif self._fails_job_at_once(job, code) or self._failed_once(uid) > int(spec.get("backoffLimit", 6)):
                self._done.add(uid)
                for other in indexes:  # the Job controller deletes a failed Job's other pods
                    rest = self._active.pop((uid, other), None)
                    if rest is not None:
                        self._stop_pod(job, rest)
                set_job_failed(self.batch, self.namespace, name,
                               reason="PodFailurePolicy" if self._fails_job_at_once(job, code)
                               else "BackoffLimitExceeded", message=f"container exited with code {code}")
                return
        if len(succeeded) == len(indexes):
            self._done.add(uid)
            completed = None if indexes == [None] else (f"0-{completions - 1}" if completions > 1 else "0")
            set_job_complete(self.batch, self.namespace, name, succeeded=len(indexes), completed_indexes=completed)
            return
        self._report(job)

    def _report(self, job: dict[str, Any]) -> None:
        """Write the Job's ``status.active`` (pending or running pods) and ``status.ready`` when they
        changed; ``startTime`` once the Job has pods."""
        uid, name = job["metadata"]["uid"], job["metadata"]["name"]
        pods = [p for (owner, _), p in self._active.items() if owner == uid and not p.disrupted]
        counts = (len(pods), sum(p.running for p in pods))
        if self._reported.get(uid) == counts:
            return
        status: dict[str, Any] = {"active": counts[0], "ready": counts[1]}
        if pods and not (job.get("status") or {}).get("startTime"):
            status["startTime"] = _now()
        self.batch.patch_namespaced_job_status(name, self.namespace, {"status": status}, _content_type=_MERGE)
        self._reported[uid] = counts

    @staticmethod
    def _ignores_disruptions(job: dict[str, Any]) -> bool:
        return any(rule.get("action") == "Ignore" and any(c.get("type") == DISRUPTION_TARGET
                                                          for c in rule.get("onPodConditions") or ())
                   for rule in (job["spec"].get("podFailurePolicy") or {}).get("rules") or [])

    def _failed_once(self, uid: str) -> int:
        """Count a failed pod of the Job; returns how many failed so far."""
        self._failures[uid] = self._failures.get(uid, 0) + 1
        return self._failures[uid]

    def _stop_pod(self, job: dict[str, Any], pod: Pod) -> None:
        """The pod is deleted (its Job suspended or failed): SIGTERM, then SIGKILL after the grace period."""
        pod.stopped = True
        pod.terminate(int(job["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)))
        if pod.owner_kind == "Job":
            _done(self.core.delete_namespaced_pod(pod.name, self.namespace, _preload_content=False))

    @staticmethod
    def _fails_job_at_once(job: dict[str, Any], code: int) -> bool:
        for rule in (job["spec"].get("podFailurePolicy") or {}).get("rules") or []:
            exit_codes = rule.get("onExitCodes")
            if rule.get("action") == "FailJob" and exit_codes and exit_codes.get("operator") == "In" \
                    and code in exit_codes.get("values", []):
                return True
        return False

    # ---- a pod -----------------------------------------------------------------------------

    def _pod_object(self, kind: str, owner: dict[str, Any], index: int | None, name: str) -> dict[str, Any]:
        """The pod as the Job controller creates it from the template (labels, owner, index, hostname)."""
        meta = owner["metadata"]
        template = copy.deepcopy(owner["spec"]["template"])
        tmeta = template.get("metadata") or {}
        labels = dict(tmeta.get("labels") or {})
        annotations = dict(tmeta.get("annotations") or {})
        spec = template["spec"]
        if kind == "Job":
            labels.update({JOB_NAME_LABEL: meta["name"], "job-name": meta["name"],
                           "batch.kubernetes.io/controller-uid": meta["uid"], "controller-uid": meta["uid"]})
        if index is not None:
            labels[COMPLETION_INDEX_LABEL] = annotations[COMPLETION_INDEX_LABEL] = str(index)
            spec["hostname"] = f"{meta['name']}-{index}"
            for container in spec["containers"]:
                container.setdefault("env", []).append({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
                    "fieldPath": f"metadata.labels['{COMPLETION_INDEX_LABEL}']"}}})
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": labels, "annotations": annotations,
                             "ownerReferences": [{"apiVersion": owner.get("apiVersion", "batch/v1"), "kind": kind,
                                                  "name": meta["name"], "uid": meta["uid"], "controller": True,
                                                  "blockOwnerDeletion": True}]},
                "spec": spec, "status": {"phase": "Pending"}}

    def _new_pod(self, kind: str, owner: dict[str, Any], index: int | None) -> Pod:
        """A new pod of ``owner`` (Pending; a Job's pod is created in the API server too)."""
        meta = owner["metadata"]
        key = (meta["uid"], index)
        attempt = self._attempts[key] = self._attempts.get(key, 0) + 1
        name = f"{meta['name']}-{attempt}" if index is None else f"{meta['name']}-{index}-{attempt}"
        obj = self._pod_object(kind, owner, index, name)
        if kind == "Job":
            _done(self.core.create_namespaced_pod(self.namespace, obj, _preload_content=False))
        hold = self._replacement_hold.pop(key, 0.0)
        pod = Pod(kind, meta["name"], attempt, self.workdir / name, name, index=index,
                  labels=obj["metadata"]["labels"], hold_until=time.monotonic() + hold if hold else 0.0)
        self._objects[name] = obj
        self.pods.append(pod)
        return pod

    def _patch_pod_status(self, pod: Pod, status: dict[str, Any]) -> None:
        if pod.owner_kind == "Job":
            _done(self.core.patch_namespaced_pod_status(pod.name, self.namespace, {"status": status}, _content_type=_MERGE,
                                                  _preload_content=False))

    def _dns(self) -> dict[str, str]:
        """Cluster DNS names of the namespace's pods (hostname.subdomain of a pod a headless Service named
        after the subdomain selects), each resolving to this host."""
        services = {s["metadata"]["name"]: s for s in self.server.objects("services", self.namespace)}
        names: dict[str, str] = {}
        for obj in self.server.objects("pods", self.namespace):
            spec, labels = obj.get("spec") or {}, obj["metadata"].get("labels") or {}
            svc = services.get(spec.get("subdomain") or "")
            if not spec.get("hostname") or svc is None or (svc.get("spec") or {}).get("clusterIP") != "None":
                continue
            selector = (svc.get("spec") or {}).get("selector") or {}
            if selector and all(labels.get(k) == v for k, v in selector.items()):
                short = f"{spec['hostname']}.{spec['subdomain']}"
                for suffix in ("", f".{self.namespace}", f".{self.namespace}.svc", f".{self.namespace}.svc.cluster.local"):
                    names[short + suffix] = "127.0.0.1"
        return names

    def _start_pod(self, owner: dict[str, Any], pod: Pod) -> None:
        obj = self._objects[pod.name]
        root = pod.root
        spec = obj["spec"]
        (container,) = spec["containers"]
        mounts = self._volumes(root, spec.get("volumes") or [], container.get("volumeMounts") or [])
        dns = sorted(self._dns().items(), key=lambda kv: len(kv[0]), reverse=True)

        def host(text: str) -> str:
            for mount_path, local in mounts:
                if text == mount_path or text.startswith(mount_path.rstrip("/") + "/"):
                    text = str(local) + text[len(mount_path.rstrip("/")):]
                    break
            for name, address in dns:  # the cluster DNS: longest names first (a.b.ns.svc before a.b)
                text = re.sub(rf"(?<![A-Za-z0-9.-]){re.escape(name)}(?![A-Za-z0-9.-])", address, text)
            return text

        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO_ROOT), "LANG": "C.UTF-8",
               "HOSTNAME": spec.get("hostname") or pod.name}
        for item in container.get("env") or []:
            env[item["name"]] = host(self._env_value(item, obj))
        port = free_port()
        env["T2S_METRICS_PORT"] = str(port)
        if spec.get("automountServiceAccountToken"):
            env["KUBECONFIG"] = str(self.kubeconfig)

        def expand(arg: str) -> str:
            return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)

        argv = [host(expand(a)) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
        if not argv or argv[0] != "t2s":
            raise ValueError(f"{pod.owner_kind} {pod.owner}: only the t2s entrypoint is simulated, got {argv[:1]}")
        pod.argv, pod.env = argv, env
        argv = [sys.executable, "-m", "text2sql_core.cli", *argv[1:]]
        cwd = Path(host(container.get("workingDir") or str(root)))
        cwd.mkdir(parents=True, exist_ok=True)
        with (root / "container.log").open("ab") as log:
            pod.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        pod.metrics_port = port
        pod.started = time.monotonic()
        key = (owner["metadata"]["uid"], pod.index)
        self._active[key] = pod
        self._patch_pod_status(pod, {"phase": "Running", "startTime": _now(), "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": _now()}]})

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

    def _env_value(self, item: dict[str, Any], pod: dict[str, Any]) -> str:
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
                return pod["metadata"]["name"]
            keyed = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
            if keyed and keyed.group(2) in (pod["metadata"].get(keyed.group(1)) or {}):
                return pod["metadata"][keyed.group(1)][keyed.group(2)]
        raise ValueError(f"env {item.get('name')}: unsupported source {source}")
