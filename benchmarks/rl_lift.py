"""Held-out EX lift of each RL algorithm (ppo, grpo, dpo) over the same under-trained SFT policy.

Runs the real pipeline on the demo dataset with the tiny model, through the same steps and the same
evaluator as ``t2s pipeline run``:

1. once: ``prepare``, ``sft`` (deliberately under-trained: a short step budget), ``predict_sft`` and
   ``evaluate_sft`` (the baseline EX on the full held-out dev split), ``rm_data`` and ``rm``;
2. per algorithm and seed: a copy of those published steps under a run of its own with ``seed`` and
   ``rl.algorithm`` set, then ``rl``, ``predict_rl`` and ``evaluate_rl``.

The lift is ``evaluate_rl.ex - evaluate_sft.ex`` in points (official Spider EX semantics, greedy
decoding with value copying and execution guidance, as the demo predicts). Budgets are comparable
by construction and reported, not hidden: ``samples`` counts the completions each algorithm
generated to learn from (PPO and GRPO: rollouts; DPO and PPO also the ``rm_data`` mining samples
their pairs come from), ``seconds`` the wall time of its steps (DPO and PPO include rm_data/rm).

    python benchmarks/rl_lift.py [--algorithms ppo grpo dpo] [--seeds 0 1 2] [--set grpo.max_steps=40]
    python benchmarks/rl_lift.py --out benchmarks/results/rl_lift_cpu_2core.json

Everything is cached under ``--workdir``: a rerun only does what is missing (delete the directory to
start over).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

#: the tiny model of the test suite's cached runs
TINY_MODEL: dict[str, Any] = {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "intermediate_size": 256,
                              "vocab_size": 4000, "max_positions": 1024, "seed": 0}
SHARED_STEPS = ("prepare", "sft", "predict_sft", "evaluate_sft", "rm_data", "rm")
SEED_STEPS = ("rl", "predict_rl", "evaluate_rl")
ALGORITHM_SETTINGS_SHARED = {"rm_data_candidates": 4}

#: per algorithm: its stages.<algorithm> settings (override any with --set ALGO.KEY=VALUE)
ALGORITHM_SETTINGS: dict[str, dict[str, Any]] = {
    # the settings of ppo_lift.py, the PPO-only predecessor (+3.1 / +2.7 / +4.2 points on seeds 0 / 1 / 2)
    "ppo": {"max_steps": 60, "batch_size": 64, "mini_batch_size": 16, "ppo_epochs": 1, "max_new_tokens": 64,
            "reward": {"mode": "execution"}, "kl_coef": 0.05, "lam": 1.0, "actor_learning_rate": 5e-4,
            "critic_warmup_steps": 10, "copy_values": True, "eval_train_prompts": 64, "save_steps": 1000},
    "grpo": {"max_steps": 30, "batch_size": 8, "num_generations": 8, "max_new_tokens": 64, "learning_rate": 1e-3,
             "copy_values": True, "eval_train_prompts": 64, "save_steps": 1000},
    "dpo": {"max_steps": 100, "batch_size": 16, "beta": 0.5, "rpo_alpha": 1.0, "eval_train_prompts": 64,
            "save_steps": 1000},
}


def _samples(algorithm: str, settings: dict[str, Any], shared: dict[str, Any]) -> int:
    """Completions generated to learn from (see the module docstring)."""
    mined = int(shared["rm_data"]["prompts"]) * int(ALGORITHM_SETTINGS_SHARED["rm_data_candidates"])
    if algorithm == "ppo":
        return settings["max_steps"] * settings["batch_size"] + mined
    if algorithm == "grpo":
        return settings["max_steps"] * settings["batch_size"] * settings.get("num_generations", 8)
    return mined


def base_config(args: argparse.Namespace, data: Path, root: Path, seed: int, algorithm: str,
                settings: dict[str, Any]):
    from text2sql_core.config import RunConfig

    return RunConfig.model_validate({
        "run_id": "lift", "seed": seed, "workdir": str(root / "work"),
        "store": {"kind": "local", "local": {"path": str(root / "store")}},
        "data": {"train": str(data / "train.json"), "dev": str(data / "dev.json"),
                 "tables": str(data / "tables.json"), "db_dir": str(data / "database")},
        "model": {"path": "tiny", "tiny": TINY_MODEL},
        "rl": {"algorithm": algorithm},
        "stages": {
            "sft": {"max_steps": args.sft_steps, "batch_size": 32, "learning_rate": 3e-3, "save_steps": 1000},
            "predict": {"batch_size": 64, "max_new_tokens": 96, "copy_values": True, "execution_guided": 4},
            "rm_data": {"limit": args.rm_prompts, "num_candidates": ALGORITHM_SETTINGS_SHARED["rm_data_candidates"], "max_new_tokens": 64, "batch_size": 16,
                        "copy_values": True},
            "rm": {"max_steps": args.rm_steps, "batch_size": 16, "learning_rate": 2e-3, "save_steps": 1000},
            algorithm: settings,
        },
    })


def run_steps(cfg, steps: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    from text2sql_core.stages.base import run_step

    out = {}
    for step in steps:
        started = time.monotonic()
        outcome = run_step(cfg, step)
        state = "cached" if outcome.skipped else f"{time.monotonic() - started:.0f}s"
        print(f"  {cfg.rl.algorithm} seed {cfg.seed} {step}: {state}", flush=True)
        out[step] = outcome.manifest.metrics
    return out


def _apply_overrides(pairs: list[str]) -> dict[str, dict[str, Any]]:
    settings = json.loads(json.dumps(ALGORITHM_SETTINGS))
    for pair in pairs:
        key, _, value = pair.partition("=")
        algorithm, _, field = key.partition(".")
        if algorithm not in settings or not field or not _:
            raise SystemExit(f"--set {pair!r}: write ALGORITHM.FIELD=VALUE, ALGORITHM one of {sorted(settings)}")
        node = settings[algorithm]
        *parents, leaf = field.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(".t2s/bench-rl-lift"), help="cache directory")
    parser.add_argument("--algorithms", nargs="+", default=None, help="default: every registered RL algorithm")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="RL seeds")
    parser.add_argument("--sft-steps", type=int, default=600, help="SFT steps (under-trained on purpose: the test suite's sft_undertrained)")
    parser.add_argument("--rm-prompts", type=int, default=240, help="training prompts mined for pairs")
    parser.add_argument("--rm-steps", type=int, default=120, help="reward-model steps")
    parser.add_argument("--shared-seed", type=int, default=42, help="run seed of the shared SFT and RM steps")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="ALGO.KEY=VALUE",
                        help="override a setting of one algorithm (YAML value), e.g. grpo.beta=0.01")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here (e.g. benchmarks/results/)")
    args = parser.parse_args()

    from text2sql_core.data.demo import write_demo
    from text2sql_core.registry import RL_KINDS

    algorithms = args.algorithms or list(RL_KINDS)
    unknown = [a for a in algorithms if a not in RL_KINDS]
    if unknown:
        raise SystemExit(f"unknown algorithm(s) {unknown}; registered: {list(RL_KINDS)}")
    settings = _apply_overrides(args.overrides)
    root = args.workdir.resolve()
    data = root / "data"
    if not (data / "train.json").is_file():
        write_demo(data, seed=0)
    shared_root = root / "shared"
    print("shared steps (SFT baseline, pairs, reward model):", flush=True)
    shared = run_steps(base_config(args, data, shared_root, args.shared_seed, "ppo", settings["ppo"]), SHARED_STEPS)
    sft_ex = shared["evaluate_sft"]["ex"]

    rows = []
    for seed in args.seeds:  # seed-major: an interrupted benchmark has every algorithm at its first seeds
        for algorithm in algorithms:
            seed_root = root / f"{algorithm}-seed-{seed}"
            run_dir = seed_root / "store" / "runs" / "lift"
            for step in SHARED_STEPS:
                if not (run_dir / step / "_manifest.json").is_file():
                    shutil.copytree(shared_root / "store" / "runs" / "lift" / step, run_dir / step,
                                    dirs_exist_ok=True, ignore=shutil.ignore_patterns("_checkpoints"))
            got = run_steps(base_config(args, data, seed_root, seed, algorithm, settings[algorithm]), SEED_STEPS)
            seconds = sum(got[s]["seconds"] for s in SEED_STEPS)
            if algorithm in ("ppo", "dpo"):  # their pairs (and PPO's reward model) are part of their cost
                seconds += shared["rm_data"]["seconds"] + (shared["rm"]["seconds"] if algorithm == "ppo" else 0)
            rows.append({"algorithm": algorithm, "seed": seed, "sft_ex": sft_ex, "rl_ex": got["evaluate_rl"]["ex"],
                         "lift_points": round(100 * (got["evaluate_rl"]["ex"] - sft_ex), 2),
                         "samples": _samples(algorithm, settings[algorithm], shared),
                         "seconds": round(seconds, 1), "rl_seconds": got["rl"]["seconds"],
                         "train_reward_before": got["rl"].get("train_reward_before"),
                         "train_reward_after": got["rl"].get("train_reward_after")})
            report(args, algorithms, settings, shared, sft_ex, rows, root, final=False)

    report(args, algorithms, settings, shared, sft_ex, rows, root, final=True)


def report(args: argparse.Namespace, algorithms: list[str], settings: dict[str, Any], shared: dict[str, Any],
           sft_ex: float, rows: list[dict[str, Any]], root: Path, *, final: bool) -> None:
    """Print the table and write the JSON (also after every run, so an interrupted benchmark keeps its rows)."""
    algorithms = [a for a in algorithms if any(r["algorithm"] == a for r in rows)]
    if final:
        print()
        print(f"Held-out EX on the demo dev split ({shared['evaluate_sft'].get('n', '?')} questions), SFT "
              f"{args.sft_steps} steps: EX {sft_ex:.3f}")
        print(f"{'algorithm':>9} {'seed':>4} {'RL EX':>6} {'lift':>7} {'samples':>8} {'seconds':>8}")
        for r in rows:
            print(f"{r['algorithm']:>9} {r['seed']:>4} {r['rl_ex']:>6.3f} {r['lift_points']:>+6.1f}p "
                  f"{r['samples']:>8} {r['seconds']:>8.0f}")
    summary = {}
    for algorithm in algorithms:
        lifts = [r["lift_points"] for r in rows if r["algorithm"] == algorithm]
        summary[algorithm] = {"seeds": len(lifts), "mean_lift_points": round(statistics.mean(lifts), 2),
                              "sd": round(statistics.stdev(lifts), 2) if len(lifts) > 1 else 0.0,
                              "min_lift_points": min(lifts), "every_seed_positive": all(x > 0 for x in lifts)}
        if final:
            print(f"{algorithm}: mean lift {summary[algorithm]['mean_lift_points']:+.1f} points "
                  f"(sd {summary[algorithm]['sd']:.1f}, min {min(lifts):+.1f}) over {len(lifts)} seed(s)")
    best = max(summary, key=lambda a: summary[a]["mean_lift_points"]) if summary else None
    goal = bool(best) and summary[best]["mean_lift_points"] >= 5 and summary[best]["every_seed_positive"]
    if final and best:
        print(f"best: {best}; goal (mean >= +5.0 points, every seed positive): {'reached' if goal else 'not reached'}")
    doc = {"benchmark": "rl_lift", "machine": "cpu_2core", "complete": final, "sft_steps": args.sft_steps,
           "sft_ex": sft_ex, "settings": {a: settings[a] for a in algorithms}, "rows": rows, "summary": summary,
           "best": best, "goal_reached": goal}
    text = json.dumps(doc, indent=2) + "\n"
    (root / "results.json").write_text(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
