"""``t2s status``: a run's steps with state, duration and key metrics (store, plus Jobs if reachable)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import EXIT_BAD_INPUT, EXIT_OK, BadInput


def _cluster_jobs(args: argparse.Namespace, run_id: str) -> tuple[list[dict] | None, list[dict] | None]:
    """The run's Jobs and stage pods as API JSON, or None (with a note on stderr) when the cluster cannot
    be reached; pods are None alone when they may not be listed (then a disruption is not shown)."""
    from ..errors import T2SError
    from ..k8s.decide import run_selector
    from ..k8s.kubeclient import load_api_client

    try:
        from kubernetes import client

        api = load_api_client(args.kubeconfig)
        resp = client.BatchV1Api(api).list_namespaced_job(args.namespace, label_selector=run_selector(run_id),
                                                          _preload_content=False, _request_timeout=10)
        try:
            jobs = json.loads(resp.data).get("items") or []
        finally:
            resp.release_conn()
    except (T2SError, OSError, ValueError, Exception) as exc:  # noqa: BLE001 - the cluster part is optional
        reason = getattr(exc, "reason", None) or exc
        print(f"t2s status: cluster not reachable ({type(exc).__name__}: {reason}); showing the store only",
              file=sys.stderr)
        return None, None
    try:
        resp = client.CoreV1Api(api).list_namespaced_pod(args.namespace, label_selector=run_selector(run_id),
                                                        _preload_content=False, _request_timeout=10)
        try:
            return jobs, json.loads(resp.data).get("items") or []
        finally:
            resp.release_conn()
    except Exception as exc:  # noqa: BLE001 - without pods only disruptions go unseen
        reason = getattr(exc, "reason", None) or exc
        print(f"t2s status: cannot list pods ({type(exc).__name__}: {reason}); a disrupted stage shows as running",
              file=sys.stderr)
        return jobs, None


def _status(args: argparse.Namespace) -> int:
    from ..config import load_run_config
    from ..graph import step_names, steps_for
    from ..k8s.status import collect_status, format_status
    from ..store import open_store

    cfg = load_run_config(args.config)
    run_id = args.run_id or cfg.run_id
    if cfg.store.kind == "local" and not Path(cfg.store.local.path).expanduser().is_dir():
        # the same rule as every command: a relative store path is relative to the current directory
        raise BadInput(f"artifact store {cfg.store.local.path!r} not found (relative paths are resolved against "
                       f"the current directory, {Path.cwd()}); run from the folder `t2s pipeline run` ran in",
                       field="--config" if args.config else "store.local.path")
    store = open_store(cfg.store)
    # Rejected keys, a missing bucket, an unreachable server: fail with that error (exit 2 or 1)
    # instead of a table where every step reads as a corrupt manifest.
    store.list(f"runs/{run_id}")
    jobs, pods = _cluster_jobs(args, run_id) if args.namespace else (None, None)
    if not jobs and not store.list(f"runs/{run_id}"):
        raise BadInput(f"no run {run_id!r} in the artifact store (nothing under runs/{run_id}/"
                       f"{' and no Job in namespace ' + args.namespace if args.namespace else ''})",
                       field="--run-id" if args.run_id else "--config")
    status = collect_status(run_id, store, steps=step_names(steps_for(cfg)), jobs=jobs, pods=pods)
    if args.output == "json":
        print(json.dumps(status.to_dict(), indent=2))
    else:
        print(format_status(status))
    corrupt = [s.step for s in status.steps if s.note.startswith("corrupt manifest")]
    if corrupt:
        print(f"t2s status: corrupt manifest in step(s) {', '.join(corrupt)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status", help="show a run's steps: state, duration and key metrics",
        description="Print each step of a run with its state (pending, running, complete, published, failed, "
                    "skipped), duration and key metrics (ex, em, loss, reward, accuracy) from the published "
                    "manifests. With --namespace the run's Jobs are read from the cluster too (kubeconfig or "
                    "in-cluster); without, or when the cluster is unreachable, the store alone is used. A relative store "
                    "path in the config is resolved against the current directory, as in every command. Exit "
                    "code 2 for a run with nothing published and no Job, or a store folder that does not "
                    "exist; 1 for an unreachable S3 store.")
    p.add_argument("--run-id", help="the run (default: run_id of --config)")
    p.add_argument("--config", help="run config YAML whose `store` section says where the artifacts are")
    p.add_argument("--namespace", help="namespace of the run's Jobs: also show Job states")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, else $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--output", choices=("table", "json"), default="table", help="table for people, json for scripts")
    p.set_defaults(func=_status)
