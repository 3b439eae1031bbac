"""ppo: RL from an under-trained SFT policy with bounded KL and held-out EX kept; kill -9 then resume; DeepSpeed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.stages.rl_runs import rm_run  # noqa: F401  (a fixture)
from text2sql_core.errors import BadInput
from text2sql_core.rl.ppo.config import PPOConfig, build_deepspeed_config
from text2sql_core.stages.base import run_step
from text2sql_core.stages.ppo import _check_deepspeed

#: PPO with the execution reward from the under-trained policy: the settings and step budget of the test.
#: Rollouts decode as predict does (values copied from the question; the constrained log-probabilities
#: are renormalised); 64 prompts a step in 4 mini-batches of 16 (one mini-batch of 16 a step barely moved
#: the policy: +0.016 to +0.05 in 60-200 steps); the critic (initialised from the reward model, on another
#: scale) trains alone for the first 10 steps; lam 1: the advantage is the return minus the value. The
#: policy trains on the first 64 training prompts, so every step samples the same prompts and one step's
#: sampled reward is comparable with another's.
PPO_SETTINGS = {"max_steps": 60, "batch_size": 64, "mini_batch_size": 16, "max_new_tokens": 64,
                "reward": {"mode": "execution"}, "lam": 1.0, "actor_learning_rate": 5e-4, "critic_warmup_steps": 10,
                "copy_values": True, "train_prompts": 64, "eval_train_prompts": 64, "eval_dev_prompts": 100,
                "eval_batch_size": 64, "save_steps": 100}
#: "raises the reward": the sampled execution reward (match 1, wrong 0, error -0.5), mean of the last 10
#: steps over the first 10, must rise by at least this much. Measured (run seed: first 10 -> last 10 steps;
#: greedy reward on the 64 prompts; dev EX on 100 held-out prompts; final KL): 42 (the test's): 0.007 ->
#: 0.131, greedy 0.500 -> 0.570, dev 0.43 -> 0.43, KL 0.41; 0: 0.040 -> 0.144, greedy 0.500 -> 0.531, dev
#: 0.43 -> 0.48, KL 0.41; 1: 0.002 -> 0.191, greedy 0.500 -> 0.586, dev 0.43 -> 0.46, KL 0.45 (rollouts
#: sampled per row, as on N ranks; with torch's global generator: +0.144, +0.171, +0.164). The greedy gain
#: on 128 prompts of the full training set (this test's criterion before) was -0.03 and +0.07 at seeds 42
#: and 0 once the reward model's pairs changed with the sampler: which few prompts flip, not the update.
SAMPLED_REWARD_GAIN = 0.08
#: the greedy reward on the 64 prompts may lose at most one prompt's worth (right to an error: 1.5 / 64)
GREEDY_REWARD_DROP = 1.5 / 64
#: "bounded KL": the mean summed per-sequence KL to the SFT policy over the last steps
KL_BOUND = 5.0


def test_deepspeed_config_takes_the_users_settings_and_ppo_batch_sizes():
    ds = build_deepspeed_config({"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}},
                                micro_batch_size=8, max_grad_norm=0.5)
    assert ds == {"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}, "train_micro_batch_size_per_gpu": 8,
                  "gradient_accumulation_steps": 1, "gradient_clipping": 0.5}
    with pytest.raises(BadInput, match="zero_optimization.stage must be 0, 1, 2 or 3"):
        build_deepspeed_config({"zero_optimization": {"stage": 4}}, micro_batch_size=8, max_grad_norm=1.0)
    with pytest.raises(BadInput, match="`train_batch_size` is set by PPO"):
        build_deepspeed_config({"train_batch_size": 64}, micro_batch_size=8, max_grad_norm=1.0)


def test_deepspeed_without_a_gpu_is_a_clear_bad_input():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(BadInput, match=r"needs CUDA GPUs and none is visible; remove `ppo.deepspeed`"):
        _check_deepspeed(PPOConfig(deepspeed={"zero_optimization": {"stage": 2}}))
    assert _check_deepspeed(PPOConfig()) is None


def test_mini_batch_must_divide_the_generation_batch():
    with pytest.raises(ValueError, match="`mini_batch_size` 5 must divide `batch_size` 16"):
        PPOConfig(batch_size=16, mini_batch_size=5)
    assert PPOConfig(batch_size=16, mini_batch_size=4).mini_batch_size == 4


@pytest.mark.slow
def test_ppo_from_an_undertrained_policy_raises_the_reward_with_bounded_kl(rm_run, tmp_path):  # noqa: F811
    cfg = rm_run.clone(tmp_path, stages={"ppo": PPO_SETTINGS})
    metrics = run_step(cfg, "rl").manifest.metrics
    print(f"PPO greedy train reward {metrics['train_reward_before']:.3f} -> {metrics['train_reward_after']:.3f}")
    assert metrics["train_reward_after"] >= metrics["train_reward_before"] - GREEDY_REWARD_DROP, metrics
    assert metrics["kl_final"] <= KL_BOUND, metrics
    # scored as the constrained policy that sampled, the KL estimate is not negative (scoring the constrained
    # samples with unconstrained log-probabilities gave -1.4 on the same run)
    assert metrics["kl_final"] >= -0.1, metrics
    assert metrics["dev_execution_accuracy_after"] >= metrics["dev_execution_accuracy_before"] - 0.02, metrics

    out = tmp_path / "store" / "runs" / cfg.run_id / "rl"
    log = [json.loads(line) for line in (out / "ppo_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "step" in r]
    assert [r["step"] for r in steps] == list(range(1, PPO_SETTINGS["max_steps"] + 1))
    rewards = [r["reward_execution"] for r in steps]
    before, after = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    print(f"PPO sampled execution reward, first 10 steps {before:.3f} -> last 10 {after:.3f}")
    assert after - before >= SAMPLED_REWARD_GAIN, rewards
    for key in ("reward", "kl", "entropy", "value_loss", "response_length", "policy_loss", "exec_match"):
        assert all(key in r for r in steps), key
    assert (out / "curves.png").stat().st_size > 1000
    # predict loads the result through the lineage: the SFT model plus this adapter
    ref = json.loads((out / "model_ref.json").read_text())
    assert ref["base"] == {"source": "step", "step": "sft", "dir": "model"}
    assert ref["adapters"][-1] == {"step": "rl", "dir": "adapter"}


def _checkpoints(store_root, run_id):
    root = store_root / "runs" / run_id / "rl" / "_checkpoints"
    return sorted(int(p.parent.name) for p in root.glob("*/_manifest.json")) if root.is_dir() else []


@pytest.mark.slow
def test_kill_9_after_a_checkpoint_then_rerun_resumes_there(rm_run, tmp_path):  # noqa: F811
    settings = {"max_steps": 8, "batch_size": 4, "max_new_tokens": 48, "save_steps": 2,
                "reward": {"mode": "execution"}, "eval_train_prompts": 0, "eval_dev_prompts": 0}
    cfg = rm_run.clone(tmp_path, stages={"ppo": settings})
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    command = [sys.executable, "-m", "text2sql_core.cli", "stage", "run", "rl", "--config", str(config_file)]
    env = {**os.environ, "T2S_LOG_FORMAT": "json"}
    store_root = tmp_path / "store"

    log_file = tmp_path / "first_attempt.log"
    with log_file.open("w") as sink:  # a file, not a pipe: a full pipe would block the stage
        proc = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while not _checkpoints(store_root, cfg.run_id):
        assert proc.poll() is None, f"ppo exited early: {log_file.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    published = _checkpoints(store_root, cfg.run_id)
    assert not (store_root / "runs" / cfg.run_id / "rl" / "_manifest.json").exists()

    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((store_root / "runs" / cfg.run_id / "rl" / "_manifest.json").read_text())
    metrics = manifest["metrics"]
    assert metrics["resumed_from_step"] == published[-1] >= 2
    assert metrics["steps"] == 8
    # one rollout batch = one Adam step: all 8 are on the restored optimizer's count
    assert metrics["actor_optimizer_steps"] == 8
    log = [json.loads(line) for line in
           (store_root / "runs" / cfg.run_id / "rl" / "ppo_log.jsonl").read_text().splitlines()]
    assert log[0] == {"event": "start", "resumed_from_step": published[-1],
                      "optimizer_steps": published[-1]}
    assert [r["step"] for r in log[1:]] == list(range(1, 9))
