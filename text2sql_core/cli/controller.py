"""``t2s controller``: chain a run's stage Jobs on Kubernetes (see ``text2sql_core/k8s``)."""

from __future__ import annotations

import argparse
import os
import re
import signal

from ..errors import EXIT_OK, BadInput, T2SError

DEFAULT_METRICS_PORT = 8080


def _metrics_port(value: int | None) -> int:
    if value is not None:
        return value
    raw = os.environ.get("T2S_METRICS_PORT", "").strip()
    if not raw:
        return DEFAULT_METRICS_PORT
    try:
        return int(raw)
    except ValueError:
        raise BadInput(f"T2S_METRICS_PORT must be a port number, got {raw!r}", field="T2S_METRICS_PORT") from None


def _run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from ..config import RUN_ID_PATTERN, format_validation_error, load_run_config
    from ..k8s.controller import Controller, ControllerConfig, StoreManifests
    from ..k8s.kubeclient import load_api_client
    from ..k8s.metrics import MetricsServer
    from ..logging import bind_context, get_logger
    from ..store import open_store

    namespace = args.namespace or os.environ.get("POD_NAMESPACE")
    if not namespace:
        raise BadInput("which namespace? pass --namespace (or set POD_NAMESPACE)", field="--namespace")
    if args.run_id is not None and not re.match(RUN_ID_PATTERN, args.run_id):
        raise BadInput(f"run id {args.run_id!r} is not a lowercase DNS label of at most 30 characters",
                       field="--run-id")
    try:
        settings = ControllerConfig(namespace=namespace, run_id=args.run_id, resync_s=args.resync_seconds,
                                    manifest_poll_s=args.manifest_poll_seconds)
    except ValidationError as exc:
        raise BadInput("; ".join(format_validation_error(exc)), field="controller options") from None
    port = _metrics_port(args.metrics_port)
    run_config = load_run_config(args.config)
    store = open_store(run_config.store)
    api = load_api_client(args.kubeconfig)
    bind_context(run=args.run_id or "*")
    log = get_logger(component="controller")
    controller = Controller(api, settings, StoreManifests(store))

    if args.once:
        if not args.run_id:
            raise BadInput("--once reconciles one run: pass --run-id", field="--run-id")
        result = controller.reconcile(args.run_id)
        p = result.plan
        print(f"run {p.run_id}: {p.state or 'no Jobs'}; {len(result.actions)} action(s) applied")
        for sp in p.stages:
            print(f"  {sp.stage:<14} {sp.state}")
        return EXIT_OK

    server = None
    if port >= 0:
        try:
            server = MetricsServer(controller.metrics, port=port, host=args.metrics_host,
                                   healthy=controller.healthy).start()
        except OSError as exc:
            raise T2SError(f"cannot serve metrics on {args.metrics_host}:{port}: {exc}", field="--metrics-port") from None
        log.info("serving metrics", port=server.port, paths="/metrics,/healthz")

    def _stop(signum: int, frame: object) -> None:
        log.info("signal received, stopping", signal=signal.Signals(signum).name)
        controller.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        controller.run()
    finally:
        if server is not None:
            server.stop()
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    from ..k8s.controller import ControllerConfig

    defaults = ControllerConfig.model_fields
    p = sub.add_parser(
        "controller", help="chain a run's stage Jobs on Kubernetes (create each when its inputs are published)",
        description="Watch the stage Jobs of a run (label text2sql-rlhf.dev/run-id) and create each one from the "
                    "run's spec ConfigMap once every upstream Job is Complete and its manifest is in the artifact "
                    "store; spec.suspend is left to the Job's queue (Kueue). A failed stage "
                    "marks the run failed (annotation text2sql-rlhf.dev/run-state and a RunFailed Event) and "
                    "nothing starts after it. State lives in the cluster and the store only, so the controller "
                    "can be restarted at any time. Serves Prometheus metrics on :PORT/metrics and /healthz.")
    p.add_argument("--namespace", help="namespace of the run's Jobs (default: $POD_NAMESPACE)")
    p.add_argument("--run-id", help="manage only this run (default: every run whose Jobs are in the namespace)")
    p.add_argument("--config", help="run config YAML; its `store` section says where manifests are published")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster service account, else $KUBECONFIG "
                                        "or ~/.kube/config)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help=f"port of /metrics and /healthz (default: $T2S_METRICS_PORT or {DEFAULT_METRICS_PORT}; "
                        "0 picks a free port, -1 serves nothing)")
    p.add_argument("--metrics-host", default="0.0.0.0", help="address the metrics server binds (default: all)")
    p.add_argument("--resync-seconds", type=float, default=defaults["resync_s"].default,
                   help=defaults["resync_s"].description)
    p.add_argument("--manifest-poll-seconds", type=float, default=defaults["manifest_poll_s"].default,
                   help=defaults["manifest_poll_s"].description)
    p.add_argument("--once", action="store_true", help="reconcile the run once, print its stages and exit")
    p.set_defaults(func=_run)
