"""Live progress of a training step: throttled log lines, ``progress.jsonl`` and Prometheus gauges.

In a pod, ``T2S_METRICS_PORT`` makes the stage serve step, loss, tokens/s and GPU memory on
``:<port>/metrics`` for the cluster's monitoring (the chart's PodMonitor scrapes it).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["ProgressReporter", "gpu_memory_bytes"]

_GAUGES: dict[str, Any] = {}
_server_started = False


def gpu_memory_bytes() -> int | None:
    """Peak GPU memory of this process, without importing torch when the stage did not."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return int(torch.cuda.max_memory_allocated())


def _gauge(name: str, doc: str) -> Any:
    from prometheus_client import Gauge

    if name not in _GAUGES:
        _GAUGES[name] = Gauge(name, doc, ["run", "stage"])
    return _GAUGES[name]


def _start_server() -> bool:
    global _server_started
    port = os.environ.get("T2S_METRICS_PORT")
    # under torchrun every rank inherits the port: only the first process of the pod serves it
    if not port or os.environ.get("LOCAL_RANK", "0") != "0":
        return False
    if not _server_started:
        from prometheus_client import start_http_server

        start_http_server(int(port))
        _server_started = True
    return True


_KNOWN = {
    "step": ("t2s_train_step", "Current optimisation step of the stage"),
    "total": ("t2s_train_total_steps", "Planned optimisation steps of the stage"),
    "loss": ("t2s_train_loss", "Latest training loss"),
    "tokens_per_s": ("t2s_train_tokens_per_second", "Training throughput in tokens per second"),
    "gpu_memory_bytes": ("t2s_gpu_memory_bytes", "Peak GPU memory allocated by the stage process"),
    "reward": ("t2s_rl_reward", "Mean reward of the latest RL batch (ppo, grpo; dpo: implicit reward margin)"),
    "kl": ("t2s_rl_kl", "Mean KL to the reference policy of the latest RL batch"),
}


class ProgressReporter:
    """Writes every report to ``progress.jsonl``; logs at most every ``log_every_s`` seconds."""

    def __init__(self, path: Path, *, log: Any, log_every_s: float = 10.0) -> None:
        self.path = path
        self.log = log
        self.log_every_s = log_every_s
        self._last_log = 0.0
        self._labels: dict[str, str] = {}

    def report(self, *, step: int | None = None, total: int | None = None, **metrics: float) -> None:
        record: dict[str, Any] = {"time": time.time()}
        if step is not None:
            record["step"] = step
        if total is not None:
            record["total"] = total
        mem = gpu_memory_bytes()
        if mem is not None:
            record["gpu_memory_bytes"] = mem
        record.update({k: float(v) for k, v in metrics.items()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if _start_server():
            import structlog

            ctx = structlog.contextvars.get_contextvars()
            labels = {"run": str(ctx.get("run", "")), "stage": str(ctx.get("stage", ""))}
            for key, value in record.items():
                if key in _KNOWN:
                    name, doc = _KNOWN[key]
                    _gauge(name, doc).labels(**labels).set(value)
        now = time.monotonic()
        if now - self._last_log >= self.log_every_s or (step is not None and step == total):
            self._last_log = now
            self.log.info("progress", **{k: v for k, v in record.items() if k != "time"})
