"""Render and lint the Helm chart with the helm binary that ``.ci/install-tools.sh`` installs.

Kept apart from the tests so that a person can look at what a case renders:

    python -m tests.charts.render -f charts/text2sql-rlhf/ci/multi-node-values.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "text2sql-rlhf"
CI_VALUES = CHART / "ci"
HELM = Path(os.environ.get("T2S_HELM", REPO_ROOT / ".tools" / "bin" / "helm"))

__all__ = ["CHART", "CI_VALUES", "HELM", "HelmError", "helm_missing", "lint", "notes", "render", "render_text",
           "stage_jobs"]


class HelmError(RuntimeError):
    """helm exited non-zero; the message holds its stderr (schema or template errors)."""


def helm_missing() -> str | None:
    """Why helm cannot run, or None when it can."""
    if not (HELM.is_file() and os.access(HELM, os.X_OK)):
        return f"helm not found at {HELM}: run `bash .ci/install-tools.sh` (it installs helm and kubectl into .tools/bin)"
    return None


def _helm(args: list[str]) -> subprocess.CompletedProcess[str]:
    problem = helm_missing()
    if problem:
        raise FileNotFoundError(problem)
    # a private HOME-like config keeps helm from reading or writing the user's repositories/cache
    with tempfile.TemporaryDirectory(prefix="t2s-helm-") as home:
        env = {**os.environ, "HELM_CONFIG_HOME": f"{home}/config", "HELM_CACHE_HOME": f"{home}/cache",
               "HELM_DATA_HOME": f"{home}/data"}
        return subprocess.run([str(HELM), *args], check=False, capture_output=True, text=True, env=env, timeout=60)


def _value_args(values: dict[str, Any] | None, values_files: Sequence[Path | str], set_values: Sequence[str],
                tmpdir: str) -> list[str]:
    args: list[str] = []
    for f in values_files:
        args += ["-f", str(f)]
    if values is not None:
        path = Path(tmpdir) / "values.json"  # JSON is YAML: no quoting surprises
        path.write_text(json.dumps(values))
        args += ["-f", str(path)]
    for s in set_values:
        args += ["--set", s]
    return args


def render_text(values: dict[str, Any] | None = None, *, values_files: Sequence[Path | str] = (),
                set_values: Sequence[str] = (), release: str = "t2s", namespace: str = "ml") -> str:
    """``helm template`` output; raises HelmError with helm's stderr when it fails."""
    with tempfile.TemporaryDirectory(prefix="t2s-values-") as tmp:
        proc = _helm(["template", release, str(CHART), "--namespace", namespace,
                      *_value_args(values, values_files, set_values, tmp)])
    if proc.returncode != 0:
        raise HelmError(proc.stderr.strip() or proc.stdout.strip())
    return proc.stdout


def render(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """The rendered documents, parsed (empty documents dropped)."""
    return [d for d in yaml.safe_load_all(render_text(values, **kwargs)) if d]


def stage_jobs(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every stage Job of a render: the Jobs rendered directly (single stage, chaining by hand) and the
    Job specs in the ConfigMap the controller creates them from (whole run)."""
    jobs = [d for d in documents if d["kind"] == "Job"]
    for cm in documents:
        if cm["kind"] == "ConfigMap" and cm["metadata"]["labels"].get("app.kubernetes.io/component") == "stage-specs":
            jobs += [yaml.safe_load(text) for _, text in sorted(cm.get("data", {}).items())]
    return jobs


def notes(values: dict[str, Any] | None = None, *, set_values: Sequence[str] = (), release: str = "t2s",
          namespace: str = "ml") -> str:
    """NOTES.txt as ``helm install --dry-run=client`` prints it (``helm template`` skips NOTES)."""
    with tempfile.TemporaryDirectory(prefix="t2s-values-") as tmp:
        proc = _helm(["install", release, str(CHART), "--dry-run=client", "--namespace", namespace,
                      *_value_args(values, (), set_values, tmp)])
    if proc.returncode != 0:
        raise HelmError(proc.stderr.strip() or proc.stdout.strip())
    _, found, text = proc.stdout.partition("NOTES:\n")
    if not found:
        raise HelmError("helm install --dry-run printed no NOTES")
    return text


def lint(*, values_files: Sequence[Path | str] = (), strict: bool = True) -> subprocess.CompletedProcess[str]:
    """``helm lint [--strict]`` of the chart; the caller checks returncode and output."""
    with tempfile.TemporaryDirectory(prefix="t2s-values-") as tmp:
        return _helm(["lint", *(["--strict"] if strict else []), str(CHART),
                      *_value_args(None, values_files, [], tmp)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the text2sql-rlhf chart (helm template).")
    parser.add_argument("-f", "--values", action="append", default=[], help="values file (repeatable)")
    parser.add_argument("--set", action="append", default=[], dest="set_values", help="helm --set (repeatable)")
    parser.add_argument("--release", default="t2s")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(render_text(values_files=args.values, set_values=args.set_values, release=args.release))
    except (HelmError, FileNotFoundError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
