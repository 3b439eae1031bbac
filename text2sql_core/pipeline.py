"""The main job: every step of a run, in order, each as a subprocess through its entrypoint.

Running each step through ``python -m text2sql_core.cli stage run`` (not in-process) is what a
Kubernetes Job does too: a crash, an OOM or a ``kill -9`` of one step leaves the others' published
artifacts intact, and rerunning the pipeline skips what is already published and resumes the rest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

from .config import RunConfig
from .errors import EXIT_BAD_INPUT, BadInput, T2SError
from .graph import STEPS, Step, get_step, topological
from .logging import get_logger

__all__ = ["StepRun", "run_pipeline", "select_steps"]


@dataclass(frozen=True)
class StepRun:
    step: str
    exit_code: int
    seconds: float


def select_steps(names: list[str] | None = None, *, until: str | None = None,
                 steps: tuple[Step, ...] = STEPS) -> list[Step]:
    """The steps to run: all of ``steps``, a named subset (in graph order), or everything up to ``until``."""
    ordered = topological(steps)
    if names:
        wanted = {get_step(n, steps).name for n in names}
        return [s for s in ordered if s.name in wanted]
    if until:
        get_step(until, steps)
        out = []
        for s in ordered:
            out.append(s)
            if s.name == until:
                break
        return out
    return ordered


def run_pipeline(config_path: str | None, run_config: RunConfig, *, steps: list[Step], force: bool = False,
                 report: bool = True) -> list[StepRun]:
    """Run ``steps`` one after the other as subprocesses; stop at the first failure.

    Raises ``T2SError`` with the failed step's exit code (2 stays 2: bad input is not retried).
    """
    log = get_logger(run=run_config.run_id, stage="pipeline")
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    results: list[StepRun] = []
    total = len(steps)
    for i, step in enumerate(steps, 1):
        cmd = [sys.executable, "-m", "text2sql_core.cli", "stage", "run", step.name, "--run-id", run_config.run_id]
        if config_path:
            cmd += ["--config", str(config_path)]
        if force:
            cmd.append("--force")
        print(f"[{i}/{total}] {step.name} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        proc = subprocess.run(cmd, env=env, check=False)
        seconds = time.monotonic() - t0
        results.append(StepRun(step.name, proc.returncode, seconds))
        if proc.returncode != 0:
            log.error("step failed; later steps not started", step=step.name, exit_code=proc.returncode)
            err_cls = BadInput if proc.returncode == EXIT_BAD_INPUT else T2SError
            raise err_cls(f"step {step.name!r} failed with exit code {proc.returncode}; fix it and rerun: "
                          f"published steps are skipped", stage=step.name)
        print(f"[{i}/{total}] {step.name} done in {seconds:.1f}s", file=sys.stderr, flush=True)
    if report:
        from .report import write_run_report

        path = write_run_report(run_config)
        print(f"report: {path}", flush=True)
    return results
