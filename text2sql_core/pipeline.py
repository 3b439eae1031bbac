"""The main job: every step of a run, in order, each as a subprocess through its entrypoint.

Running each step through ``python -m text2sql_core.cli stage run`` (not in-process) is what a
Kubernetes Job does too: a crash, an OOM or a ``kill -9`` of one step leaves the others' published
artifacts intact, and rerunning the pipeline skips what is already published and resumes the rest.
Each step runs in its own process group, ended with the pipeline (no orphan keeps training a step).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from .config import RunConfig
from .errors import EXIT_BAD_INPUT, BadInput, T2SError
from .graph import STEPS, Step, get_step, topological
from .logging import get_logger

__all__ = ["StepRun", "run_child", "run_pipeline", "select_steps"]


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


_PR_SET_PDEATHSIG = 1


def _child_setup(parent: int) -> None:
    """In the forked child, before exec: own process group, and SIGTERM as soon as the pipeline dies.

    ``PR_SET_PDEATHSIG`` (Linux) covers even a ``kill -9`` of the pipeline, which no handler sees; the
    step's runner turns that SIGTERM into a clean exit (its lease released, its workers stopped).
    """
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the pipeline died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _end_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the child's whole process group, SIGKILL what is left after ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            # the leader is gone; its group may still hold workers it started
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
        return


def run_child(cmd: list[str], *, env: dict[str, str] | None = None, grace_s: float = 30.0) -> int:
    """Run ``cmd`` in its own process group; it and its workers end when this process ends, however.

    SIGTERM/SIGINT of the pipeline are passed on to the whole group (then SIGKILL after ``grace_s``);
    a ``kill -9`` of the pipeline reaches the child through the parent-death signal.
    """
    parent = os.getpid()
    proc = subprocess.Popen(cmd, env=env, preexec_fn=lambda: _child_setup(parent))  # noqa: PLW1509

    def _on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_term) if in_main else None
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:
            _end_group(proc, grace_s)
        else:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # workers the finished step left behind
            except (ProcessLookupError, PermissionError):
                pass
        if in_main:
            signal.signal(signal.SIGTERM, previous)


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
        returncode = run_child(cmd, env=env)
        seconds = time.monotonic() - t0
        results.append(StepRun(step.name, returncode, seconds))
        if returncode != 0:
            log.error("step failed; later steps not started", step=step.name, exit_code=returncode)
            err_cls = BadInput if returncode == EXIT_BAD_INPUT else T2SError
            raise err_cls(f"step {step.name!r} failed with exit code {returncode}; fix it and rerun: "
                          f"published steps are skipped", stage=step.name)
        print(f"[{i}/{total}] {step.name} done in {seconds:.1f}s", file=sys.stderr, flush=True)
    if report:
        from .report import write_run_report

        path = write_run_report(run_config)
        print(f"report: {path}", flush=True)
    return results
