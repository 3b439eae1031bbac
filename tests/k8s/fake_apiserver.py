"""A small in-process Kubernetes API server, for tests only.

No cluster can run on the development and CI machines, yet the controller must be tested against
the real ``kubernetes`` client speaking real HTTP: request paths, query parameters, patch content
types, watch streams, resourceVersions and error ``Status`` objects are exactly where controllers
break. This server implements that much of the API machinery, generically for namespaced (and a
few cluster-scoped) resources:

* create / get / list / replace / patch / delete / deletecollection, and the ``status``
  subresource for resources that have one (Jobs, Pods, ...), which the main resource then ignores;
* a global ``resourceVersion`` counter, optimistic concurrency (409 ``Conflict`` on a stale
  ``metadata.resourceVersion`` in a replace or patch), 409 ``AlreadyExists``, 404 ``NotFound``;
* label selectors (``=``, ``==``, ``!=``, ``in``, ``notin``, exists, ``!key``) and simple field
  selectors on dotted paths;
* ``?watch=true`` streams (chunked JSON lines: ADDED / MODIFIED / DELETED, BOOKMARK on request,
  selector transitions turned into ADDED / DELETED like the real server), resumable from a
  ``resourceVersion``; a bounded change history (``history_window``) after which a resume gets a
  410 ``Expired`` ERROR event, and a list with ``resourceVersionMatch=Exact`` or a ``continue``
  token older than the history gets a 410 ``Status``;
* merge patch (RFC 7386), strategic merge patch (treated as a merge patch: lists are replaced,
  not merged by key) and JSON patch (RFC 6902);
* core/v1 and events.k8s.io/v1 Events are one resource, converted between the two versions.

* mutating admission on create (``add_admission``), as a webhook such as Kueue's does;
* garbage collection of dependents: deleting an object deletes the objects whose
  ``ownerReferences`` name its uid (background propagation; ``propagationPolicy=Orphan`` keeps them).

Tests inspect ``server.requests`` (every request, parsed) and may hook requests
(``add_hook``) to inject API errors or to kill a controller process at an exact moment.
``set_job_running`` / ``set_job_complete`` / ``set_job_failed`` play the Job controller's part by
patching ``/status`` through the real client.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "FakeApiServer",
    "HookResult",
    "LabelSelector",
    "Request",
    "set_job_complete",
    "set_job_failed",
    "set_job_running",
    "write_kubeconfig",
]


# --------------------------------------------------------------------------------------------
# Resource types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceType:
    """One REST resource: where it lives in the URL space and how it is stored."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status_subresource: bool = False
    storage: str = ""  # resources sharing a storage are versions of one resource (Events)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_key(self) -> str:
        return self.storage or f"{self.plural}.{self.group}"

    @property
    def qualified(self) -> str:
        """The name the real server uses in messages: ``jobs.batch``, ``configmaps``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


_KNOWN: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False, status_subresource=True),
    ResourceType("", "v1", "pods", "Pod", status_subresource=True),
    ResourceType("", "v1", "services", "Service", status_subresource=True),
    ResourceType("", "v1", "configmaps", "ConfigMap"),
    ResourceType("", "v1", "secrets", "Secret"),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount"),
    ResourceType("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", status_subresource=True),
    ResourceType("", "v1", "events", "Event", storage="events"),
    ResourceType("events.k8s.io", "v1", "events", "Event", storage="events"),
    ResourceType("batch", "v1", "jobs", "Job", status_subresource=True),
    ResourceType("batch", "v1", "cronjobs", "CronJob", status_subresource=True),
    ResourceType("apps", "v1", "deployments", "Deployment", status_subresource=True),
    ResourceType("apps", "v1", "statefulsets", "StatefulSet", status_subresource=True),
    ResourceType("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding",
                 namespaced=False),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease"),
)
_BY_PATH = {(r.group, r.version, r.plural): r for r in _KNOWN}


def _resource_type(group: str, version: str, plural: str, namespaced: bool) -> ResourceType:
    """A known resource, or a generic one (kind guessed from the plural) for anything else."""
    known = _BY_PATH.get((group, version, plural))
    if known is not None:
        return known
    singular = plural.removesuffix("s")
    return ResourceType(group, version, plural, singular[:1].upper() + singular[1:], namespaced=namespaced)


# --------------------------------------------------------------------------------------------
# Errors as Status objects
# --------------------------------------------------------------------------------------------


class ApiError(Exception):
    """Raised inside the server; becomes a ``Status`` response (or an ERROR watch event)."""

    def __init__(self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


def _not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rt.qualified} "{name}" not found',
                    {"name": name, "group": rt.group, "kind": rt.plural})


def _gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def _invalid(rt: ResourceType, name: str, message: str) -> ApiError:
    return ApiError(422, "Invalid", f'{rt.kind} "{name}" is invalid: {message}',
                    {"name": name, "group": rt.group, "kind": rt.kind})


# --------------------------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" match objects without the label too, as in Kubernetes.
        return not present or labels[self.key] not in self.values


_SET_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s*\(([^)]*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``( )`` of a set requirement."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


@dataclass(frozen=True)
class LabelSelector:
    """A parsed ``labelSelector`` query string; every requirement must hold."""

    requirements: tuple[_Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        if not text:
            return cls()
        reqs = []
        for part in _split_top_level(text):
            if m := _SET_RE.match(part):
                values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
                reqs.append(_Requirement(m.group(1), m.group(2), values))
            elif m := _EQ_RE.match(part):
                op = "!=" if m.group(2) == "!=" else "="
                reqs.append(_Requirement(m.group(1), op, frozenset([m.group(3)])))
            elif m := _EXISTS_RE.match(part):
                reqs.append(_Requirement(m.group(2), "!" if m.group(1) else "exists"))
            else:
                raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        return cls(tuple(reqs))

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


@dataclass(frozen=True)
class _FieldSelector:
    terms: tuple[tuple[str, bool, str], ...] = ()  # (dotted path, equal?, value)

    @classmethod
    def parse(cls, text: str | None) -> _FieldSelector:
        if not text:
            return cls()
        terms = []
        for part in text.split(","):
            m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
            if not m:
                raise ApiError(400, "BadRequest", f"invalid field selector: {part!r}")
            terms.append((m.group(1), m.group(2) != "!=", m.group(3)))
        return cls(tuple(terms))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for path, equal, value in self.terms:
            current: Any = obj
            for key in path.split("."):
                current = current.get(key) if isinstance(current, Mapping) else None
            actual = "" if current is None else str(current)
            if (actual == value) != equal:
                return False
        return True


# --------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(doc, list):
            doc = doc[int(part)]
        elif isinstance(doc, dict):
            doc = doc[part]
        else:
            raise KeyError(part)
    return doc


def json_patch(doc: Any, ops: list[Mapping[str, Any]]) -> Any:
    """RFC 6902 (add, remove, replace, move, copy, test) on a deep copy of ``doc``."""
    doc = copy.deepcopy(doc)

    def add(parts: list[str], value: Any) -> None:
        nonlocal doc
        if not parts:
            doc = value
            return
        parent = _walk(doc, parts[:-1])
        last = parts[-1]
        if isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else int(last), value)
        else:
            parent[last] = value

    def remove(parts: list[str]) -> Any:
        parent = _walk(doc, parts[:-1])
        last = parts[-1]
        return parent.pop(int(last)) if isinstance(parent, list) else parent.pop(last)

    try:
        for op in ops:
            kind, parts = op["op"], _pointer(op["path"])
            if kind == "add":
                add(parts, copy.deepcopy(op["value"]))
            elif kind == "remove":
                remove(parts)
            elif kind == "replace":
                remove(parts)
                add(parts, copy.deepcopy(op["value"]))
            elif kind == "move":
                add(parts, remove(_pointer(op["from"])))
            elif kind == "copy":
                add(parts, copy.deepcopy(_walk(doc, _pointer(op["from"]))))
            elif kind == "test":
                if _walk(doc, parts) != op["value"]:
                    raise ApiError(422, "Invalid", f"test operation failed at {op['path']}")
            else:
                raise ApiError(422, "Invalid", f"unknown JSON patch op {kind!r}")
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise ApiError(422, "Invalid", f"JSON patch cannot be applied: {exc!r}") from exc
    return doc


# --------------------------------------------------------------------------------------------
# Events: one resource, two API versions
# --------------------------------------------------------------------------------------------

# (core/v1 field, events.k8s.io/v1 field)
_EVENT_FIELDS = (
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("source", "deprecatedSource"),
    ("reportingComponent", "reportingController"),
)


def _convert(obj: dict[str, Any], rt: ResourceType) -> dict[str, Any]:
    """The stored object as ``rt``'s version presents it."""
    out = copy.deepcopy(obj)
    if rt.storage == "events" and out.get("apiVersion") != rt.api_version:
        to_new = rt.group == "events.k8s.io"
        for core_name, new_name in _EVENT_FIELDS:
            src, dst = (core_name, new_name) if to_new else (new_name, core_name)
            if src in out:
                out[dst] = out.pop(src)
        if to_new and not out.get("eventTime"):
            # events.k8s.io/v1 requires eventTime (the Python client rejects null): derive it.
            stamp = out.get("deprecatedFirstTimestamp") or out.get("metadata", {}).get("creationTimestamp") or _now()
            out["eventTime"] = stamp.replace("Z", ".000000Z") if stamp.endswith("Z") and "." not in stamp else stamp
    out["apiVersion"] = rt.api_version
    out["kind"] = rt.kind
    return out


# --------------------------------------------------------------------------------------------
# State: objects, the change history, watchers
# --------------------------------------------------------------------------------------------


@dataclass
class _Change:
    rv: int
    type: str  # ADDED / MODIFIED / DELETED
    key: tuple[str, str, str]  # (storage, namespace, name)
    obj: dict[str, Any]  # the new object, or the last state of a deleted one
    old: dict[str, Any] | None  # the object before the change (None for ADDED)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Request:
    """One request as the server saw it, for assertions in tests."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any
    verb: str = ""  # get, list, watch, create, update, patch, delete, deletecollection
    resource: str = ""  # plural, e.g. "jobs"
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    status: int = 0  # the HTTP status answered (0 until answered; watches answer 200)
    time: float = field(default_factory=time.monotonic)

    @property
    def field_manager(self) -> str | None:
        return self.query.get("fieldManager")


@dataclass(frozen=True)
class HookResult:
    """What a ``before`` hook may return to answer a request with an error instead."""

    code: int
    reason: str = "InternalError"
    message: str = "injected by a test hook"


Hook = Callable[[Request], "HookResult | None"]
#: a mutating admission webhook: called with the resource's kind and group and the object being
#: created, which it may change in place
Admission = Callable[[str, str, dict[str, Any]], None]


@dataclass
class _Route:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


class FakeApiServer:
    """The server: start it, point ``kubernetes.client.Configuration(host=server.url)`` at it.

    ``history_window`` bounds the retained change history (a watch resuming from an older
    resourceVersion gets 410); ``compact()`` drops it all at once and ``expire_watches()`` ends
    every open watch stream, which together force a client to relist.
    """

    def __init__(self, *, history_window: int = 1000, bookmark_interval_s: float = 1.0,
                 default_watch_timeout_s: int = 1800, host: str = "127.0.0.1") -> None:
        self.history_window = history_window
        self.bookmark_interval_s = bookmark_interval_s
        self.default_watch_timeout_s = default_watch_timeout_s
        self.requests: list[Request] = []
        self._host = host
        self._lock = threading.Condition(threading.RLock())
        self._rv = 0
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._history: deque[_Change] = deque()
        self._compacted_rv = 0
        self._watch_epoch = 0
        self._stopping = False
        self._hooks: list[tuple[str, Hook]] = []
        self._admissions: list[Admission] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeApiServer:
        server = ThreadingHTTPServer((self._host, 0), _Handler)
        server.daemon_threads = True
        server.api = self  # type: ignore[attr-defined]
        self._httpd = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-apiserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def configuration(self):  # -> kubernetes.client.Configuration
        from kubernetes import client

        cfg = client.Configuration(host=self.url)
        return cfg

    def api_client(self):  # -> kubernetes.client.ApiClient
        from kubernetes import client

        return client.ApiClient(self.configuration())

    def write_kubeconfig(self, path: Path, *, namespace: str = "default") -> Path:
        """A kubeconfig pointing at this server, for code that loads one (subprocess tests)."""
        return write_kubeconfig(path, self.url, namespace=namespace)

    # ---- test controls ---------------------------------------------------------------------

    def add_hook(self, when: str, fn: Hook) -> None:
        """Call ``fn(request)`` ``"before"`` handling (may return a HookResult to fail the request)
        or ``"after"`` a write changed state but before the response is sent."""
        if when not in ("before", "after"):
            raise ValueError("when must be 'before' or 'after'")
        with self._lock:
            self._hooks.append((when, fn))

    def add_admission(self, fn: Admission) -> None:
        """Run ``fn(kind, group, obj)`` on every object before it is created (a mutating webhook)."""
        with self._lock:
            self._admissions.append(fn)

    def remove_hook(self, fn: Hook) -> None:
        with self._lock:
            self._hooks = [(w, f) for w, f in self._hooks if f is not fn]

    def compact(self) -> int:
        """Forget the whole change history; returns the resourceVersion it was compacted at."""
        with self._lock:
            self._history.clear()
            self._compacted_rv = self._rv
            return self._rv

    def expire_watches(self) -> None:
        """End every open watch stream (clients then resume from their last resourceVersion)."""
        with self._lock:
            self._watch_epoch += 1
            self._lock.notify_all()

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def objects(self, plural: str, namespace: str | None = None, *, group: str = "") -> list[dict[str, Any]]:
        """Stored objects of a resource (deep copies), sorted by namespace and name."""
        rt = _resource_type(group, "v1", plural, True)
        with self._lock:
            found = [copy.deepcopy(o) for (s, ns, _), o in sorted(self._objects.items())
                     if s == rt.storage_key and (namespace is None or ns == namespace)]
        return found

    def get_object(self, plural: str, namespace: str, name: str, *, group: str = "") -> dict[str, Any] | None:
        rt = _resource_type(group, "v1", plural, True)
        with self._lock:
            obj = self._objects.get((rt.storage_key, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def requests_where(self, **match: Any) -> list[Request]:
        """Requests whose attributes equal every keyword (``verb="patch", resource="jobs"``)."""
        with self._lock:
            snapshot = list(self.requests)
        return [r for r in snapshot if all(getattr(r, k) == v for k, v in match.items())]

    # ---- request handling ------------------------------------------------------------------

    def _hooks_for(self, when: str) -> list[Hook]:
        with self._lock:
            return [fn for w, fn in self._hooks if w == when]

    def handle(self, h: _Handler, method: str) -> None:
        split = urlsplit(h.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        content_type = (h.headers.get("Content-Type") or "").split(";")[0].strip()
        body: Any = None
        req = Request(method=method, path=split.path, query=query, content_type=content_type, body=None)
        with self._lock:
            self.requests.append(req)
        try:
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError as exc:
                    raise ApiError(400, "BadRequest", f"request body is not JSON: {exc}") from exc
            req.body = body
            if split.path in ("/version", "/healthz", "/readyz", "/livez", "/api", "/apis"):
                self._send(h, req, 200, self._meta_document(split.path))
                return
            route = self._route(split.path)
            req.resource, req.namespace = route.rt.plural, route.namespace
            req.name, req.subresource = route.name, route.subresource
            req.verb = self._verb(method, route, query)
            for fn in self._hooks_for("before"):
                result = fn(req)
                if result is not None:
                    raise ApiError(result.code, result.reason, result.message)
            if req.verb == "watch":
                self._watch(h, req, route, query)
                return
            code, payload = self._dispatch(req, route, query, body)
            for fn in self._hooks_for("after"):
                fn(req)
            self._send(h, req, code, payload)
        except ApiError as err:
            self._send(h, req, err.code, err.status())

    def _send(self, h: _Handler, req: Request, code: int, payload: Any) -> None:
        req.status = code
        data = json.dumps(payload).encode()
        try:
            h.send_response(code)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True

    @staticmethod
    def _meta_document(path: str) -> dict[str, Any]:
        if path == "/version":
            return {"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "platform": "linux/amd64"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            groups = sorted({r.group for r in _KNOWN if r.group})
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}} for g in groups]}
        return {"status": "ok"}

    @staticmethod
    def _route(path: str) -> _Route:
        parts = [unquote(p) for p in path.strip("/").split("/") if p]
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        plural = rest[0]
        name = rest[1] if len(rest) >= 2 else None
        sub = rest[2] if len(rest) == 3 else None
        rt = _resource_type(group, version, plural, namespace is not None)
        if namespace is not None and not rt.namespaced:
            raise ApiError(404, "NotFound", f"{rt.qualified} is not namespaced")
        if namespace is None and rt.namespaced and name is not None:
            raise ApiError(404, "NotFound", f"{rt.qualified} is namespaced; the path needs a namespace")
        if sub is not None and not (sub == "status" and rt.status_subresource):
            raise ApiError(404, "NotFound", f"{rt.qualified} has no subresource {sub!r}")
        return _Route(rt, namespace, name, sub)

    @staticmethod
    def _verb(method: str, route: _Route, query: Mapping[str, str]) -> str:
        if method == "GET":
            if route.name is not None:
                return "get"
            return "watch" if query.get("watch", "").lower() in ("true", "1") else "list"
        if method == "POST" and route.name is None:
            return "create"
        if method == "PUT" and route.name is not None:
            return "update"
        if method == "PATCH" and route.name is not None:
            return "patch"
        if method == "DELETE":
            return "delete" if route.name is not None else "deletecollection"
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {route.rt.qualified}")

    def _dispatch(self, req: Request, route: _Route, query: Mapping[str, str],
                  body: Any) -> tuple[int, Any]:
        verb = req.verb
        if verb == "get":
            return 200, self._get(route)
        if verb == "list":
            return 200, self._list(route, query)
        if verb == "create":
            return 201, self._create(route, body, query)
        if verb == "update":
            return 200, self._update(route, body, query)
        if verb == "patch":
            return 200, self._patch(route, body, req.content_type, query)
        if verb == "delete":
            return 200, self._delete(route, query)
        return 200, self._delete_collection(route, query)

    # ---- verbs -----------------------------------------------------------------------------

    def _key(self, route: _Route, name: str) -> tuple[str, str, str]:
        return (route.rt.storage_key, route.namespace or "", name)

    def _get(self, route: _Route) -> dict[str, Any]:
        assert route.name is not None
        with self._lock:
            obj = self._objects.get(self._key(route, route.name))
            if obj is None:
                raise _not_found(route.rt, route.name)
            return _convert(obj, route.rt)

    def _snapshot(self, rv: int) -> dict[tuple[str, str, str], dict[str, Any]]:
        """Every object as it was at resourceVersion ``rv`` (undoing later changes)."""
        if rv < self._compacted_rv:
            raise _gone(f"too old resource version: {rv} ({self._compacted_rv})")
        state = dict(self._objects)
        for change in reversed(self._history):
            if change.rv <= rv:
                break
            if change.old is None:
                state.pop(change.key, None)
            else:
                state[change.key] = change.old
        return state

    def _list(self, route: _Route, query: Mapping[str, str]) -> dict[str, Any]:
        labels = LabelSelector.parse(query.get("labelSelector"))
        fields = _FieldSelector.parse(query.get("fieldSelector"))
        limit = int(query.get("limit") or 0)
        token = query.get("continue") or ""
        rv_param = query.get("resourceVersion") or ""
        with self._lock:
            start_after = ""
            if token:
                try:
                    decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
                    at_rv, start_after = int(decoded["rv"]), str(decoded["start"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise ApiError(400, "BadRequest", "invalid continue token") from exc
                if at_rv < self._compacted_rv:
                    raise _gone("The provided continue parameter is too old to display a consistent list "
                                "result. You can start a new list without the continue parameter.")
                state = self._snapshot(at_rv)
            elif rv_param and query.get("resourceVersionMatch") == "Exact":
                at_rv = int(rv_param)
                if at_rv > self._rv:
                    raise ApiError(504, "Timeout", f"Too large resource version: {at_rv}, current: {self._rv}")
                state = self._snapshot(at_rv)
            else:
                if rv_param not in ("", "0") and int(rv_param) > self._rv:
                    raise ApiError(504, "Timeout", f"Too large resource version: {rv_param}, current: {self._rv}")
                at_rv, state = self._rv, self._objects
            items = []
            for (storage, ns, name), obj in sorted(state.items()):
                if storage != route.rt.storage_key:
                    continue
                if route.namespace is not None and ns != route.namespace:
                    continue
                if start_after and f"{ns}/{name}" <= start_after:
                    continue
                if labels.matches(obj.get("metadata", {}).get("labels")) and fields.matches(obj):
                    items.append(_convert(obj, route.rt))
        metadata: dict[str, Any] = {"resourceVersion": str(at_rv)}
        if limit and len(items) > limit:
            last = items[limit - 1]["metadata"]
            cursor = f"{last.get('namespace', '')}/{last['name']}"
            metadata["continue"] = base64.urlsafe_b64encode(
                json.dumps({"rv": at_rv, "start": cursor}).encode()).decode()
            metadata["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return {"kind": f"{route.rt.kind}List", "apiVersion": route.rt.api_version, "metadata": metadata,
                "items": items}

    def _commit(self, change_type: str, key: tuple[str, str, str], obj: dict[str, Any] | None,
                old: dict[str, Any] | None) -> dict[str, Any]:
        """Store a change under the next resourceVersion and wake the watchers. Lock held."""
        self._rv += 1
        if change_type == "DELETED":
            assert old is not None
            final = copy.deepcopy(old)
            final["metadata"]["resourceVersion"] = str(self._rv)
            del self._objects[key]
            self._history.append(_Change(self._rv, "DELETED", key, final, old))
            result = final
        else:
            assert obj is not None
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._objects[key] = obj
            self._history.append(_Change(self._rv, change_type, key, obj, old))
            result = obj
        while len(self._history) > self.history_window:
            self._compacted_rv = self._history.popleft().rv
        self._lock.notify_all()
        return result

    @staticmethod
    def _touch_managed_fields(obj: dict[str, Any], query: Mapping[str, str], operation: str,
                              subresource: str | None, api_version: str) -> None:
        manager = query.get("fieldManager")
        if not manager:
            return
        entries = [e for e in obj["metadata"].get("managedFields", [])
                   if not (e.get("manager") == manager and e.get("operation") == operation
                           and e.get("subresource") == subresource)]
        entry = {"manager": manager, "operation": operation, "apiVersion": api_version, "time": _now(),
                 "fieldsType": "FieldsV1", "fieldsV1": {}}
        if subresource:
            entry["subresource"] = subresource
        entries.append(entry)
        obj["metadata"]["managedFields"] = entries

    def _validate(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        name = obj["metadata"].get("name", "")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name) or len(name) > 253:
            raise _invalid(rt, name, "metadata.name: must be a lowercase RFC 1123 subdomain")
        for key, value in (obj["metadata"].get("labels") or {}).items():
            if not isinstance(value, str) or len(value) > 63 or not re.fullmatch(
                    r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?", value):
                raise _invalid(rt, name, f"metadata.labels: invalid value {value!r} for {key!r}")
        for key, value in (obj["metadata"].get("annotations") or {}).items():
            if not isinstance(value, str):
                raise _invalid(rt, name, f"metadata.annotations: value of {key!r} must be a string")
        if rt.kind == "Job" and rt.group == "batch":
            pod = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
            if not pod.get("containers"):
                raise _invalid(rt, name, "spec.template.spec.containers: Required value")
            if pod.get("restartPolicy") not in ("Never", "OnFailure"):
                raise _invalid(rt, name, 'spec.template.spec.restartPolicy: Unsupported value: '
                                         f'{pod.get("restartPolicy")!r}: supported values: "OnFailure", "Never"')

    @staticmethod
    def _default(rt: ResourceType, obj: dict[str, Any]) -> None:
        if rt.kind == "Job" and rt.group == "batch":
            spec = obj.setdefault("spec", {})
            spec.setdefault("suspend", False)
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completions", 1)
            spec.setdefault("parallelism", 1)
            spec.setdefault("completionMode", "NonIndexed")
            uid = obj["metadata"]["uid"]
            spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
            template_labels = spec.setdefault("template", {}).setdefault("metadata", {}).setdefault("labels", {})
            template_labels.setdefault("batch.kubernetes.io/controller-uid", uid)
            template_labels.setdefault("batch.kubernetes.io/job-name", obj["metadata"]["name"])
            obj.setdefault("status", {})

    def _create(self, route: _Route, body: Any, query: Mapping[str, str]) -> dict[str, Any]:
        rt = route.rt
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of a create must be an object")
        if rt.namespaced and route.namespace is None:
            raise ApiError(405, "MethodNotAllowed", f"{rt.qualified} must be created in a namespace")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if route.namespace is not None:
            if meta.get("namespace") not in (None, "", route.namespace):
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match "
                                                  "the namespace sent on the request")
            meta["namespace"] = route.namespace
        if body.get("kind") not in (None, rt.kind):
            raise ApiError(400, "BadRequest", f"the kind {body.get('kind')!r} does not match {rt.kind!r}")
        with self._lock:
            if not meta.get("name"):
                if not meta.get("generateName"):
                    raise _invalid(rt, "", "metadata.name: Required value: name or generateName is required")
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            key = self._key(route, meta["name"])
            if key in self._objects:
                raise ApiError(409, "AlreadyExists", f'{rt.qualified} "{meta["name"]}" already exists',
                               {"name": meta["name"], "group": rt.group, "kind": rt.plural})
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta["generation"] = 1
            meta.pop("resourceVersion", None)
            obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
            for admit in self._admissions:
                admit(rt.kind, rt.group, obj)
            self._default(rt, obj)
            self._validate(rt, obj)
            self._touch_managed_fields(obj, query, "Update", None, rt.api_version)
            if query.get("dryRun"):
                return _convert(obj, rt)
            return _convert(self._commit("ADDED", key, obj, None), rt)

    def _write(self, route: _Route, new: dict[str, Any], query: Mapping[str, str],
               operation: str) -> dict[str, Any]:
        """Validate and store ``new`` as the next version of the routed object. Lock held."""
        rt, name = route.rt, route.name
        assert name is not None
        key = self._key(route, name)
        old = self._objects.get(key)
        if old is None:
            raise _not_found(rt, name)
        if not isinstance(new, dict) or not isinstance(new.get("metadata", {}), dict):
            raise ApiError(400, "BadRequest", "the object must be a JSON object with object metadata")
        meta = new.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise ApiError(400, "BadRequest", f"the name of the object ({meta.get('name')}) does not match "
                                              f"the name on the URL ({name})")
        wanted_rv = meta.get("resourceVersion")
        if wanted_rv not in (None, "") and str(wanted_rv) != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {rt.qualified} "{name}": the '
                                            "object has been modified; please apply your changes to the "
                                            "latest version and try again",
                           {"name": name, "group": rt.group, "kind": rt.plural})
        if route.subresource == "status":
            merged = copy.deepcopy(old)
            merged["status"] = copy.deepcopy(new.get("status", {}))
            new = merged
        else:
            for system in ("uid", "creationTimestamp", "generation", "managedFields"):
                if system in old["metadata"]:
                    meta[system] = copy.deepcopy(old["metadata"][system])
            meta["name"] = name
            if route.namespace is not None:
                meta["namespace"] = route.namespace
            if rt.status_subresource:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            strip = ("metadata", "status", "apiVersion", "kind")
            if {k: v for k, v in new.items() if k not in strip} != {k: v for k, v in old.items()
                                                                     if k not in strip}:
                meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if rt.storage and old.get("apiVersion") != rt.api_version:
            group, _, version = old["apiVersion"].rpartition("/")
            new = _convert(new, _resource_type(group, version, rt.plural, rt.namespaced))
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        self._validate(rt, new)
        self._touch_managed_fields(new, query, operation, route.subresource, rt.api_version)
        if query.get("dryRun"):
            return _convert(new, rt)
        return _convert(self._commit("MODIFIED", key, new, old), rt)

    def _update(self, route: _Route, body: Any, query: Mapping[str, str]) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of an update must be an object")
        with self._lock:
            return self._write(route, copy.deepcopy(body), query, "Update")

    def _patch(self, route: _Route, body: Any, content_type: str, query: Mapping[str, str]) -> dict[str, Any]:
        assert route.name is not None
        with self._lock:
            old = self._objects.get(self._key(route, route.name))
            if old is None:
                raise _not_found(route.rt, route.name)
            current = _convert(old, route.rt)
            if content_type == "application/json-patch+json":
                if not isinstance(body, list):
                    raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
                new = json_patch(current, body)
            elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
                new = merge_patch(current, body)
            else:
                raise ApiError(415, "UnsupportedMediaType",
                               f"the patch content type {content_type!r} is not supported by this server")
            # The precondition of a patch is the resourceVersion the client put in its body.
            if not (isinstance(body, dict) and "resourceVersion" in (body.get("metadata") or {})):
                new.setdefault("metadata", {}).pop("resourceVersion", None)
            return self._write(route, new, query, "Update")

    def _delete(self, route: _Route, query: Mapping[str, str]) -> dict[str, Any]:
        assert route.name is not None
        with self._lock:
            key = self._key(route, route.name)
            old = self._objects.get(key)
            if old is None:
                raise _not_found(route.rt, route.name)
            final = self._commit("DELETED", key, None, old)
            if query.get("propagationPolicy") != "Orphan":
                self._collect_dependents(final["metadata"]["uid"])
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": route.name, "group": route.rt.group, "kind": route.rt.plural,
                            "uid": final["metadata"]["uid"]}}

    def _collect_dependents(self, uid: str) -> None:
        """Delete, transitively, every object owned by ``uid`` (the garbage collector's part). Lock held."""
        doomed = [uid]
        while doomed:
            owner = doomed.pop()
            for key, obj in sorted(self._objects.items()):
                if key in self._objects and any(ref.get("uid") == owner
                                                for ref in obj["metadata"].get("ownerReferences") or ()):
                    final = self._commit("DELETED", key, None, obj)
                    doomed.append(final["metadata"]["uid"])

    def _delete_collection(self, route: _Route, query: Mapping[str, str]) -> dict[str, Any]:
        labels = LabelSelector.parse(query.get("labelSelector"))
        fields = _FieldSelector.parse(query.get("fieldSelector"))
        with self._lock:
            doomed = [k for k, o in self._objects.items()
                      if k[0] == route.rt.storage_key and (route.namespace is None or k[1] == route.namespace)
                      and labels.matches(o["metadata"].get("labels")) and fields.matches(o)]
            for key in sorted(doomed):
                self._commit("DELETED", key, None, self._objects[key])
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}

    # ---- watch -----------------------------------------------------------------------------

    def _watch(self, h: _Handler, req: Request, route: _Route, query: Mapping[str, str]) -> None:
        rt = route.rt
        labels = LabelSelector.parse(query.get("labelSelector"))
        fields = _FieldSelector.parse(query.get("fieldSelector"))
        timeout = float(query.get("timeoutSeconds") or self.default_watch_timeout_s)
        bookmarks = query.get("allowWatchBookmarks", "").lower() == "true"
        rv_param = query.get("resourceVersion") or ""
        deadline = time.monotonic() + timeout

        def visible(obj: Mapping[str, Any] | None, key: tuple[str, str, str]) -> bool:
            if obj is None or key[0] != rt.storage_key:
                return False
            if route.namespace is not None and key[1] != route.namespace:
                return False
            return labels.matches(obj.get("metadata", {}).get("labels")) and fields.matches(obj)

        initial: list[dict[str, Any]] = []
        gone: ApiError | None = None
        with self._lock:
            epoch = self._watch_epoch
            if rv_param in ("", "0"):
                position = self._rv
                initial = [{"type": "ADDED", "object": _convert(o, rt)}
                           for k, o in sorted(self._objects.items()) if visible(o, k)]
            else:
                position = int(rv_param)
                if position < self._compacted_rv:
                    gone = _gone(f"too old resource version: {position} ({self._compacted_rv})")
        req.status = 200
        try:
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            if gone is not None:
                self._chunk(h, {"type": "ERROR", "object": gone.status()})
                return
            for event in initial:
                self._chunk(h, event)
            last_bookmark = time.monotonic()
            while True:
                with self._lock:
                    pending: list[dict[str, Any]] = []
                    while True:
                        if self._stopping or self._watch_epoch != epoch or time.monotonic() >= deadline:
                            break
                        if position < self._compacted_rv:
                            gone = _gone(f"too old resource version: {position} ({self._compacted_rv})")
                            break
                        pending = self._events_after(position, rt, visible)
                        if pending or self._rv > position:
                            break
                        if bookmarks and time.monotonic() - last_bookmark >= self.bookmark_interval_s:
                            break
                        self._lock.wait(timeout=0.1)
                    ended = self._stopping or self._watch_epoch != epoch or time.monotonic() >= deadline
                    newest = self._rv
                if gone is not None:
                    self._chunk(h, {"type": "ERROR", "object": gone.status()})
                    return
                for event in pending:
                    self._chunk(h, event)
                position = max(position, newest)
                if ended:
                    return
                if bookmarks and time.monotonic() - last_bookmark >= self.bookmark_interval_s:
                    self._chunk(h, {"type": "BOOKMARK", "object": {
                        "kind": rt.kind, "apiVersion": rt.api_version,
                        "metadata": {"resourceVersion": str(position)}}})
                    last_bookmark = time.monotonic()
        except (BrokenPipeError, ConnectionResetError, OSError):
            h.close_connection = True
            return
        finally:
            try:
                h.wfile.write(b"0\r\n\r\n")
                h.wfile.flush()
            except OSError:
                pass
            h.close_connection = True

    def _events_after(self, position: int, rt: ResourceType,
                      visible: Callable[[Mapping[str, Any] | None, tuple[str, str, str]], bool]) -> list[dict]:
        """Watch events for changes after ``position``, as this watcher's selectors see them. Lock held."""
        events = []
        for change in self._history:
            if change.rv <= position:
                continue
            was, now = visible(change.old, change.key), visible(change.obj, change.key)
            if change.type == "DELETED":
                kind = "DELETED" if was else None
            elif was and now:
                kind = "MODIFIED"
            elif now:
                kind = "ADDED"
            elif was:
                kind = "DELETED"  # the object left the selector: the real server reports a deletion
            else:
                kind = None
            if kind is not None:
                events.append({"type": kind, "object": _convert(change.obj, rt)})
        return events

    @staticmethod
    def _chunk(h: _Handler, event: Mapping[str, Any]) -> None:
        data = json.dumps(event).encode() + b"\n"
        h.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        h.wfile.flush()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in separate writes; with Nagle on, delayed ACKs add 40 ms to each
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self.server.api.handle(self, "GET")  # type: ignore[attr-defined]

    def do_POST(self) -> None:
        self.server.api.handle(self, "POST")  # type: ignore[attr-defined]

    def do_PUT(self) -> None:
        self.server.api.handle(self, "PUT")  # type: ignore[attr-defined]

    def do_PATCH(self) -> None:
        self.server.api.handle(self, "PATCH")  # type: ignore[attr-defined]

    def do_DELETE(self) -> None:
        self.server.api.handle(self, "DELETE")  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``server.requests`` instead of an access log."""


def write_kubeconfig(path: Path, server_url: str, *, namespace: str = "default") -> Path:
    """A kubeconfig with one context pointing at ``server_url`` (a token the fake server ignores)."""
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server_url}}],
        "users": [{"name": "fake", "user": {"token": "fake-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
    }
    path.write_text(json.dumps(doc))
    return path


# --------------------------------------------------------------------------------------------
# The Job controller's part, played by tests
# --------------------------------------------------------------------------------------------

_MERGE = "application/merge-patch+json"


def _patch_status(batch_api: Any, namespace: str, name: str, status: dict[str, Any]) -> None:
    batch_api.patch_namespaced_job_status(name, namespace, {"status": status}, _content_type=_MERGE)


def _condition(kind: str, reason: str, message: str) -> dict[str, str]:
    now = _now()
    return {"type": kind, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": now, "lastTransitionTime": now}


def set_job_running(batch_api: Any, namespace: str, name: str, *, active: int = 1) -> None:
    """A pod of the Job is running: ``startTime`` and ``active`` set."""
    _patch_status(batch_api, namespace, name, {"startTime": _now(), "active": active, "ready": active})


def set_job_complete(batch_api: Any, namespace: str, name: str, *, succeeded: int = 1,
                     completed_indexes: str | None = None) -> None:
    """The Job succeeded: ``SuccessCriteriaMet`` and ``Complete`` conditions, as Kubernetes 1.31+ sets
    (``completed_indexes``, e.g. "0-1", for an Indexed Job)."""
    job = batch_api.read_namespaced_job_status(name, namespace)
    start = job.status.start_time if job.status is not None else None
    status: dict[str, Any] = {
        "active": 0, "ready": 0, "succeeded": succeeded, "completionTime": _now(),
        "conditions": [_condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of "
                                                                               "succeeded pods"),
                       _condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods")],
    }
    if completed_indexes is not None:
        status["completedIndexes"] = completed_indexes
    if start is None:
        status["startTime"] = _now()
    _patch_status(batch_api, namespace, name, status)


def set_job_failed(batch_api: Any, namespace: str, name: str, *, reason: str = "BackoffLimitExceeded",
                   message: str = "Job has reached the specified backoff limit") -> None:
    """The Job failed: ``FailureTarget`` and ``Failed`` conditions with ``reason``."""
    job = batch_api.read_namespaced_job_status(name, namespace)
    status: dict[str, Any] = {"active": 0, "ready": 0, "failed": 1,
                              "conditions": [_condition("FailureTarget", reason, message),
                                             _condition("Failed", reason, message)]}
    if job.status is None or job.status.start_time is None:
        status["startTime"] = _now()
    _patch_status(batch_api, namespace, name, status)
