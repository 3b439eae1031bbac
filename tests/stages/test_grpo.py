"""grpo: from the under-trained SFT policy, the sampled reward rises on a fixed prompt set and held-out EX
holds; kill -9 then resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from text2sql_core.config import RunConfig
from text2sql_core.graph import steps_for
from text2sql_core.registry import RL_KINDS
from text2sql_core.stages.base import run_step

#: GRPO with Arctic's graded execution reward (the default) from the under-trained policy: the settings and
#: step budget of the test. 8 prompts x 8 completions a step, sampled as predict decodes (values copied from
#: the question, the constrained log-probabilities renormalised), DAPO's token-level loss, no reference (beta 0).
#: The policy trains on the first 32 training prompts, so 4 steps are one epoch over all of them and the
#: sampled reward of one epoch is comparable with another's (the same prompts, 256 samples); 60 steps are
#: 15 epochs (3840 samples).
GRPO_SETTINGS = {"max_steps": 60, "batch_size": 8, "num_generations": 8, "max_new_tokens": 64, "copy_values": True,
                 "learning_rate": 1e-3, "train_prompts": 32, "eval_train_prompts": 32, "eval_dev_prompts": 100,
                 "eval_batch_size": 64, "save_steps": 100, "num_threads": 1}
#: the steps of one epoch over the training prompts
EPOCH_STEPS = GRPO_SETTINGS["train_prompts"] // GRPO_SETTINGS["batch_size"]
#: the reward GRPO maximises, the mean sampled reward of the last two epochs over the first two, must
#: rise by at least this much. Measured (run seed: first two epochs -> last two; greedy reward on the 32
#: prompts; dev EX on 100 held-out prompts): 42 (the test's): 0.357 -> 0.483, greedy 0.672 -> 0.709,
#: dev 0.43 -> 0.38; 0: 0.362 -> 0.446, greedy 0.672 -> 0.688, dev 0.43 -> 0.44; 1: 0.330 -> 0.461, greedy
#: 0.672 -> 0.713, dev 0.43 -> 0.41. Learning rate 1e-2 (an overshooting step) takes the sampled reward
#: from 0.13 to 0.0 in 30 steps, and the greedy reward and dev EX to 0. The greedy gain on 128 prompts of
#: the full training set after 30 steps (this test's criterion before) was +0.04 at seed 42 until per-row
#: seeded sampling changed the draws, and is -0.02 at seeds 42 and 0 since: which few prompts flip, not a
#: measure of the loss.
SAMPLED_REWARD_GAIN = 0.05
#: the greedy reward on the 32 prompts may lose at most one prompt's worth of reward
GREEDY_REWARD_DROP = 1 / 32
#: held-out EX of the under-trained SFT policy before GRPO (measured 0.43): SFT's own learning check in make test
SFT_DEV_EX_FLOOR = 0.3
#: held-out EX (greedy, 100 dev prompts) may not collapse: training 15 epochs on 32 prompts moves it by
#: -5 to +1 points (measured above); a step that overshoots takes it to 0
DEV_EX_DROP = 0.1


def grpo_config(trained, dest, settings):
    """A private copy of the trained run with ``rl.algorithm: grpo`` and these grpo settings."""
    doc = trained.clone(dest, stages={"grpo": settings}).model_dump(mode="json")
    doc["rl"] = {**doc.get("rl", {}), "algorithm": "grpo"}
    cfg = RunConfig.model_validate(doc)
    step = next(s.name for s in steps_for(cfg) if s.kind == "grpo")
    return cfg, step


@pytest.mark.training
def test_grpo_from_an_undertrained_policy_raises_the_sampled_reward_and_keeps_held_out_ex(sft_undertrained, tmp_path):
    cfg, step = grpo_config(sft_undertrained, tmp_path, GRPO_SETTINGS)
    started = time.monotonic()
    metrics = run_step(cfg, step).manifest.metrics
    print(f"GRPO greedy train reward {metrics['train_reward_before']:.3f} -> {metrics['train_reward_after']:.3f}, "
          f"dev EX {metrics['dev_execution_accuracy_before']:.3f} -> {metrics['dev_execution_accuracy_after']:.3f}, "
          f"{metrics['samples']} samples, {time.monotonic() - started:.0f}s")
    assert metrics["algorithm"] == "grpo" and metrics["samples"] == 60 * 8 * 8
    # the starting point learnt from SFT: the 600-step policy already gets a share of the dev split right
    # (0.43 on these 100 prompts; a broken sft, tokenizer or value copy gives ~0)
    assert metrics["dev_execution_accuracy_before"] >= SFT_DEV_EX_FLOOR, metrics
    assert metrics["train_reward_after"] >= metrics["train_reward_before"] - GREEDY_REWARD_DROP, metrics
    assert metrics["dev_execution_accuracy_after"] >= metrics["dev_execution_accuracy_before"] - DEV_EX_DROP, metrics

    out = tmp_path / "store" / "runs" / cfg.run_id / step
    log = [json.loads(line) for line in (out / "grpo_log.jsonl").read_text().splitlines()]
    records = [r for r in log if "step" in r]
    assert [r["step"] for r in records] == list(range(1, GRPO_SETTINGS["max_steps"] + 1))
    rewards = [r["reward"] for r in records]
    first, last = rewards[:2 * EPOCH_STEPS], rewards[-2 * EPOCH_STEPS:]
    before, after = sum(first) / len(first), sum(last) / len(last)
    print(f"GRPO sampled reward, first two epochs {before:.3f} -> last two {after:.3f}")
    assert after - before >= SAMPLED_REWARD_GAIN, rewards
    for key in ("reward", "reward_graded_execution", "frac_reward_zero_std", "clip_low", "clip_high", "entropy",
                "completion_length", "policy_loss", "exec_match"):
        assert all(key in r for r in records), key
    assert not any("kl" in r for r in records)  # beta 0: the reference never ran
    assert (out / "curves.png").stat().st_size > 1000
    ref = json.loads((out / "model_ref.json").read_text())
    assert ref["base"] == {"source": "step", "step": "sft", "dir": "model"}
    assert ref["adapters"][-1] == {"step": step, "dir": "adapter"}


def _checkpoints(store_root, run_id, step):
    root = store_root / "runs" / run_id / step / "_checkpoints"
    return sorted(int(p.parent.name) for p in root.glob("*/_manifest.json")) if root.is_dir() else []


@pytest.mark.training
def test_kill_9_after_a_checkpoint_then_rerun_resumes_there(sft_undertrained, tmp_path):
    settings = {"max_steps": 6, "batch_size": 2, "num_generations": 2, "max_new_tokens": 48, "save_steps": 2,
                "eval_train_prompts": 0, "eval_dev_prompts": 0, "num_threads": 1}
    cfg, step = grpo_config(sft_undertrained, tmp_path, settings)
    config_file = tmp_path / "run.yaml"
    doc = cfg.model_dump(mode="json")
    for kind in RL_KINDS:  # a dump carries every kind's defaults; a file naming another RL kind is refused
        if kind != "grpo":
            doc["stages"].pop(kind, None)
    config_file.write_text(yaml.safe_dump(doc))
    command = [sys.executable, "-m", "text2sql_core.cli", "stage", "run", step, "--config", str(config_file)]
    env = {**os.environ, "T2S_LOG_FORMAT": "json"}
    store_root = tmp_path / "store"

    log_file = tmp_path / "first_attempt.log"
    with log_file.open("w") as sink:  # a file, not a pipe: a full pipe would block the stage
        proc = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while not _checkpoints(store_root, cfg.run_id, step):
        assert proc.poll() is None, f"grpo exited early: {log_file.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    published = _checkpoints(store_root, cfg.run_id, step)
    assert not (store_root / "runs" / cfg.run_id / step / "_manifest.json").exists()

    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((store_root / "runs" / cfg.run_id / step / "_manifest.json").read_text())["metrics"]
    assert metrics["resumed_from_step"] == published[-1] >= 2
    assert metrics["steps"] == 6
    assert metrics["optimizer_steps"] == 6  # one Adam step a batch, counted on from the restored optimizer
    log = [json.loads(line) for line in
           (store_root / "runs" / cfg.run_id / step / "grpo_log.jsonl").read_text().splitlines()]
    assert log[0] == {"event": "start", "resumed_from_step": published[-1], "optimizer_steps": published[-1]}
    assert [r["step"] for r in log[1:]] == list(range(1, 7))
