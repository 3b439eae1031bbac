"""The ``dpo`` stage kind (``rl.algorithm: dpo``): a thin adapter around :mod:`text2sql_core.rl.dpo`.

Offline preference optimisation of the SFT policy on the rm_data step's pairs (chosen = gold SQL,
rejected = the policy's own execution-verified wrong SQL, or a verified perturbation of gold): no
reward model, no sampling during training. The policy is the SFT model plus a new LoRA adapter; with
the adapter disabled it is the reference. Trains on ``train_pairs.jsonl``; rm_data's held-out split
``eval_pairs.jsonl`` (split by prompt) gives the pairwise accuracy, every ``eval_steps`` and at the end.

Published (through :func:`~text2sql_core.stages.rl_loop.run_rl_training`, as for ppo and grpo):
``adapter/``, ``model_ref.json`` (the SFT lineage plus this adapter, so ``predict_rl`` loads it with
``load_policy_from_step``), ``dpo_log.jsonl``, ``curves.png``, ``eval.json`` (held-out pairwise accuracy
and greedy EX before and after).
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import BadInput
from ..rl.dpo.config import DPOConfig
from .base import Stage, StageContext
from .rl_loop import open_rl_inputs, run_rl_training

__all__ = ["STAGE", "DPOConfig", "run"]

CURVES = ("loss", "margin", "accuracy", "rewards_chosen", "rewards_rejected", "eval_accuracy", "logp_chosen",
          "logp_rejected", "nll_chosen")


def run(ctx: StageContext) -> dict[str, Any]:
    from ..rl.dpo.trainer import DPOTrainer
    from ..rl.rewards import ExecutionJudge
    from ..sql.sandbox import SandboxPool
    from .rm import read_pairs

    cfg: DPOConfig = ctx.config
    seed = ctx.run_config.seed
    pairs_dir = ctx.input("rm_data")
    train = read_pairs(pairs_dir / "train_pairs.jsonl")[:cfg.train_pairs]
    held_out = read_pairs(pairs_dir / "eval_pairs.jsonl")[:cfg.eval_pairs]
    if not train:
        raise BadInput("no training pairs", uri=str(pairs_dir / "train_pairs.jsonl"), stage=ctx.step.name)
    inputs = open_rl_inputs(ctx, cfg, algorithm="DPO", train_prompts=None)  # every prompt: EX evaluation only
    prepared, policy, eval_train, eval_dev = inputs.prepared, inputs.policy, inputs.eval_train, inputs.eval_dev

    pool = SandboxPool(cfg.sandbox.sandbox_processes) if eval_train or eval_dev else None
    try:
        judge = (ExecutionJudge(prepared / "database", timeout_s=cfg.sandbox.sql_timeout_s,
                                row_cap=cfg.sandbox.row_cap, pool=pool) if pool is not None else None)
        trainer = DPOTrainer(policy, inputs.tokenizer, train, cfg, eval_pairs=held_out, judge=judge, seed=seed)

        def evaluate(after: bool) -> dict[str, Any]:
            result: dict[str, Any] = {}
            if held_out:
                result["pairs"] = trainer.evaluate_pairs(held_out)
            if eval_train:
                result["train"] = trainer.evaluate(eval_train, cfg.eval_batch_size)
            if eval_dev:
                result["dev"] = trainer.evaluate(eval_dev, cfg.eval_batch_size)
            return result

        metrics = run_rl_training(ctx, trainer, max_steps=cfg.max_steps, save_steps=cfg.save_steps,
                                  logging_steps=cfg.logging_steps, evaluate=evaluate,
                                  progress_keys={"loss": "loss", "margin": "margin", "accuracy": "accuracy",
                                                 "eval_accuracy": "eval_accuracy"},
                                  curves=CURVES, title="DPO", sft_ref=inputs.sft_ref)
    finally:
        if pool is not None:
            pool.close()

    report = json.loads((ctx.output_dir / "eval.json").read_text())  # before: from the checkpoint on resume
    for when in ("before", "after"):
        for key in ("accuracy", "logp_accuracy", "margin"):
            if key in report[when].get("pairs", {}):
                metrics[f"eval_pairs_{key}_{when}"] = report[when]["pairs"][key]
    last = trainer.history[-min(5, len(trainer.history)):]
    metrics.update({"train_pairs": len(train), "eval_pairs": len(held_out),
                    "margin_final": sum(r["margin"] for r in last) / len(last),
                    "train_accuracy_final": sum(r["accuracy"] for r in last) / len(last)})
    return metrics


STAGE = Stage(name="dpo", config_cls=DPOConfig, run=run,
              description="DPO of the SFT policy on the mined (gold, wrong SQL) pairs; reference = adapter off.")
