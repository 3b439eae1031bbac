"""The GPU benchmark's smoke mode runs on a CPU and reports every measurement it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_throughput.py"


@pytest.mark.slow
def test_cpu_tiny_smoke_run_prints_the_report() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny"], check=False, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["device"] == "cpu" and report["tiny"] is True
    for name in ("sft_1b", "sft_7b_lora"):
        r = report[name]
        assert r["tokens_per_s"] > 0 and r["model_tflops_per_s"] >= 0 and r["mfu"] is None  # no peak known on CPU
        assert r["final_loss"] > 0
    lora = report["sft_7b_lora"]
    assert lora["lora"] and lora["gradient_checkpointing"] and 0 < lora["trainable_params"] < lora["params"]
    ppo = report["ppo_1b"]
    shares = [ppo[f"{p}_share"] for p in ("generation", "scoring", "training")]
    assert all(s > 0 for s in shares) and abs(sum(shares) - 1) < 0.01
    assert ppo["step_seconds"] > 0 and ppo["generated_tokens_per_s"] > 0


def test_full_shapes_refuse_to_run_on_a_cpu() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu"], check=False, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--tiny" in proc.stderr
