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
import random
from typing import Any

from ..errors import BadInput
from ..rl.dpo.config import DPOConfig
from .base import Stage, StageContext
from .rl_loop import require_one_process, run_rl_training

__all__ = ["STAGE", "DPOConfig", "run"]

CURVES = ("loss", "margin", "accuracy", "rewards_chosen", "rewards_rejected", "eval_accuracy", "logp_chosen",
          "logp_rejected", "nll_chosen")


def run(ctx: StageContext) -> dict[str, Any]:
    import torch

    require_one_process("dpo")

    from ..models.loading import load_policy_from_step, read_model_ref
    from ..rl.dpo.trainer import DPOTrainer
    from ..rl.reward_model import add_lora
    from ..rl.rewards import ExecutionJudge
    from ..rl.rollout import examples_from_rows
    from ..sql.sandbox import SandboxPool
    from .rm import read_pairs
    from .rm_data import read_prompts

    cfg: DPOConfig = ctx.config
    seed = ctx.run_config.seed
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    pairs_dir = ctx.input("rm_data")
    train = read_pairs(pairs_dir / "train_pairs.jsonl")[:cfg.train_pairs]
    held_out = read_pairs(pairs_dir / "eval_pairs.jsonl")[:cfg.eval_pairs]
    if not train:
        raise BadInput("no training pairs", uri=str(pairs_dir / "train_pairs.jsonl"), stage=ctx.step.name)
    prepared = ctx.input("prepare")
    examples = examples_from_rows(read_prompts(prepared, "train"))
    eval_train = random.Random(seed).sample(examples, min(cfg.eval_train_prompts, len(examples)))
    eval_dev = examples_from_rows(read_prompts(prepared, "dev")[:cfg.eval_dev_prompts]) if cfg.eval_dev_prompts else []

    torch.manual_seed(seed)
    sft_ref = read_model_ref(ctx.input("sft"))
    policy, tokenizer = load_policy_from_step(ctx, "sft")
    if hasattr(policy, "merge_and_unload"):  # a quantized base keeps its SFT adapter attached
        raise BadInput("DPO needs the SFT adapters merged into the base (its reference is the policy with the DPO "
                       "adapter off); 4-bit (QLoRA) policies are not supported: set model.quantization: none",
                       field="model.quantization")
    policy = add_lora(policy, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=0.0,
                      target_modules=cfg.lora_target_modules, task="CAUSAL_LM").eval()

    pool = SandboxPool(cfg.sandbox.sandbox_processes) if eval_train or eval_dev else None
    try:
        judge = (ExecutionJudge(prepared / "database", timeout_s=cfg.sandbox.sql_timeout_s,
                                row_cap=cfg.sandbox.row_cap, pool=pool) if pool is not None else None)
        trainer = DPOTrainer(policy, tokenizer, train, cfg, eval_pairs=held_out, judge=judge, seed=seed)

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
                                  curves=CURVES, title="DPO", sft_ref=sft_ref)
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
