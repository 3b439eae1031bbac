"""Held-out EX lift of PPO over its SFT starting point, over several PPO seeds (goal: >= 5 points).

Runs the real pipeline on the demo dataset with the tiny model, through the same steps and the same
evaluator as ``t2s pipeline run``:

1. once: ``prepare``, ``sft`` (deliberately under-trained: a short step budget), ``predict_sft`` and
   ``evaluate_sft`` (the baseline EX on the held-out dev split), ``rm_data`` and ``rm``;
2. per seed: a copy of those published steps under a run of its own with ``seed`` set, then ``ppo``,
   ``predict_ppo`` and ``evaluate_ppo``.

The lift is ``evaluate_ppo.ex - evaluate_sft.ex`` in points (official Spider EX semantics, greedy
decoding with value copying and execution guidance, as the demo predicts), printed per seed with the
mean and standard deviation, and written as JSON. Pair mining and PPO rollouts decode under the same
value-copy constraint as prediction.

    python benchmarks/ppo_lift.py [--seeds 0 1 2] [--ppo-steps 60] [--reward-mode execution]

Everything is cached under ``--workdir``: a rerun only does what is missing (delete the directory to
start over). On two CPU cores expect about 5 minutes for the shared steps and 3 per seed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

#: the tiny model of the test suite's cached runs
TINY_MODEL: dict[str, Any] = {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "intermediate_size": 256,
                              "vocab_size": 4000, "max_positions": 1024, "seed": 0}
SHARED_STEPS = ("prepare", "sft", "predict_sft", "evaluate_sft", "rm_data", "rm")
SEED_STEPS = ("ppo", "predict_ppo", "evaluate_ppo")


def base_config(args: argparse.Namespace, data: Path, root: Path, run_id: str, seed: int):
    from text2sql_core.config import RunConfig

    return RunConfig.model_validate({
        "run_id": run_id, "seed": seed, "workdir": str(root / "work"),
        "store": {"kind": "local", "local": {"path": str(root / "store")}},
        "data": {"train": str(data / "train.json"), "dev": str(data / "dev.json"),
                 "tables": str(data / "tables.json"), "db_dir": str(data / "database")},
        "model": {"path": "tiny", "tiny": TINY_MODEL},
        "stages": {
            "sft": {"max_steps": args.sft_steps, "batch_size": 32, "learning_rate": 3e-3, "save_steps": 1000},
            "predict": {"batch_size": 64, "max_new_tokens": 96, "copy_values": True, "execution_guided": 4},
            "rm_data": {"limit": args.rm_prompts, "num_candidates": 4, "max_new_tokens": 64, "batch_size": 16,
                        "copy_values": True},
            "rm": {"max_steps": args.rm_steps, "batch_size": 16, "learning_rate": 2e-3, "save_steps": 1000},
            "ppo": {"max_steps": args.ppo_steps, "batch_size": args.batch_size,
                    "mini_batch_size": args.mini_batch_size, "ppo_epochs": args.ppo_epochs, "max_new_tokens": 64,
                    "reward": {"mode": args.reward_mode}, "kl_coef": args.kl_coef, "lam": args.lam,
                    "actor_learning_rate": args.actor_lr, "critic_warmup_steps": args.critic_warmup,
                    "copy_values": True, "eval_train_prompts": 128, "save_steps": 1000},
        },
    })


def run_steps(cfg, steps: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    from text2sql_core.stages.base import run_step

    out = {}
    for step in steps:
        started = time.monotonic()
        outcome = run_step(cfg, step)
        state = "cached" if outcome.skipped else f"{time.monotonic() - started:.0f}s"
        print(f"  {cfg.run_id}/{step}: {state}", flush=True)
        out[step] = outcome.manifest.metrics
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(".t2s/bench-ppo-lift"), help="cache directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="PPO seeds")
    parser.add_argument("--sft-steps", type=int, default=600, help="SFT steps (under-trained on purpose)")
    parser.add_argument("--rm-prompts", type=int, default=240, help="training prompts mined for RM pairs")
    parser.add_argument("--rm-steps", type=int, default=120, help="reward-model steps")
    parser.add_argument("--ppo-steps", type=int, default=60, help="PPO steps per seed")
    parser.add_argument("--lam", type=float, default=1.0, help="lambda of GAE")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per PPO step")
    parser.add_argument("--mini-batch-size", type=int, default=16, help="experiences per optimisation step")
    parser.add_argument("--ppo-epochs", type=int, default=1, help="passes over each rollout batch")
    parser.add_argument("--critic-warmup", type=int, default=10, help="PPO steps that train only the critic")
    parser.add_argument("--reward-mode", choices=("rm", "execution", "hybrid"), default="execution")
    parser.add_argument("--kl-coef", type=float, default=0.05, help="beta of the per-token KL penalty")
    parser.add_argument("--actor-lr", type=float, default=5e-4, help="actor adapter learning rate")
    parser.add_argument("--shared-seed", type=int, default=42, help="run seed of the shared SFT and RM steps")
    args = parser.parse_args()

    from text2sql_core.data.demo import write_demo

    root = args.workdir.resolve()
    data = root / "data"
    if not (data / "train.json").is_file():
        write_demo(data, seed=0)
    shared_root = root / "shared"
    print("shared steps (SFT baseline, reward model):", flush=True)
    shared = run_steps(base_config(args, data, shared_root, "lift", args.shared_seed), SHARED_STEPS)
    sft_ex = shared["evaluate_sft"]["ex"]

    rows = []
    for seed in args.seeds:
        seed_root = root / f"seed-{seed}"
        run_dir = seed_root / "store" / "runs" / "lift"
        for step in SHARED_STEPS:
            if not (run_dir / step / "_manifest.json").is_file():
                shutil.copytree(shared_root / "store" / "runs" / "lift" / step, run_dir / step, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("_checkpoints"))
        print(f"seed {seed}:", flush=True)
        got = run_steps(base_config(args, data, seed_root, "lift", seed), SEED_STEPS)
        ppo = got["ppo"]
        rows.append({"seed": seed, "sft_ex": sft_ex, "ppo_ex": got["evaluate_ppo"]["ex"],
                     "lift_points": 100 * (got["evaluate_ppo"]["ex"] - sft_ex),
                     "train_reward_before": ppo.get("train_reward_before"),
                     "train_reward_after": ppo.get("train_reward_after"), "kl_final": ppo["kl_final"],
                     "ppo_seconds": ppo["seconds"]})

    print()
    print(f"Held-out EX on the demo dev split ({shared['evaluate_sft'].get('examples', '?')} questions), "
          f"reward {args.reward_mode}, {args.ppo_steps} PPO steps x {args.batch_size} prompts, "
          f"SFT {args.sft_steps} steps")
    print(f"{'seed':>4} {'SFT EX':>7} {'PPO EX':>7} {'lift':>7} {'reward before->after':>21} {'KL':>6} {'PPO s':>6}")
    for r in rows:
        print(f"{r['seed']:>4} {r['sft_ex']:>7.3f} {r['ppo_ex']:>7.3f} {r['lift_points']:>+6.1f}p "
              f"{r['train_reward_before']:>9.3f} -> {r['train_reward_after']:<8.3f} {r['kl_final']:>6.2f} "
              f"{r['ppo_seconds']:>6.0f}")
    lifts = [r["lift_points"] for r in rows]
    spread = statistics.stdev(lifts) if len(lifts) > 1 else 0.0
    print(f"mean lift {statistics.mean(lifts):+.1f} points (sd {spread:.1f}) over {len(lifts)} seed(s); "
          f"goal >= +5.0 points: {'reached' if statistics.mean(lifts) >= 5 else 'not reached'}")
    (root / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items() if k != "workdir"},
                                                   "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
