"""The chart's monitoring objects as Prometheus sees them: the PrometheusRule's groups as a rules
file, the dashboard's panel queries with Grafana's variables filled in, and the Prometheus binaries
(Debian's ``prometheus`` package, installed by ``.ci/install-tools.sh``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from tests.charts.render import CHART

__all__ = ["DASHBOARD", "dashboard_queries", "prometheus", "prometheus_missing", "promtool", "rules_file"]

DASHBOARD = CHART / "dashboards" / "text2sql-rlhf.json"
#: Grafana's variables, as a dashboard showing every run over the last hour fills them in
GRAFANA_VARIABLES = {"$run": ".*", "$__range": "1h", "$__rate_interval": "1m", "$__interval": "15s"}


def _binary(env: str, name: str) -> str | None:
    return os.environ.get(env) or shutil.which(name)


def promtool() -> str:
    return _binary("T2S_PROMTOOL", "promtool") or "promtool"


def prometheus() -> str:
    return _binary("T2S_PROMETHEUS", "prometheus") or "prometheus"


def prometheus_missing() -> str | None:
    """Why promtool or prometheus cannot run, or None when both can."""
    for env, name in (("T2S_PROMTOOL", "promtool"), ("T2S_PROMETHEUS", "prometheus")):
        if not _binary(env, name):
            return f"{name} not found: run `bash .ci/install-tools.sh` (apt package prometheus) or set {env}"
    return None


def rules_file(documents: list[dict[str, Any]], path: Path) -> Path:
    """Write the rendered PrometheusRule's groups as a Prometheus rules file."""
    (rule,) = [d for d in documents if d["kind"] == "PrometheusRule"]
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def dashboard_queries(dashboard: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, Grafana variables replaced."""
    board = dashboard if dashboard is not None else json.loads(DASHBOARD.read_text())
    out = []
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for var, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(var, value)
            out.append((panel["title"], expr))
    return out
