"""The ``grpo`` stage kind (``rl.algorithm: grpo``): a thin adapter around :mod:`text2sql_core.rl.grpo`.

The policy is the SFT model plus a new LoRA adapter; with ``beta > 0`` the reference is the same
model with the adapter disabled (no second copy). No critic and, unless the reward list has an
``rm`` term, no reward model: each step samples ``num_generations`` completions of ``batch_size``
training prompts, runs them in the SQL sandbox, and normalises the rewards within each group (see
:mod:`text2sql_core.rl.grpo.trainer` for the loop and why it is ours rather than TRL's).
Checkpoints hold the adapter, the optimizer, the step and every RNG; a rerun resumes from the newest.

Published (:func:`~text2sql_core.stages.rl_loop.run_rl_training`): ``adapter/``, ``model_ref.json``
(the SFT lineage plus this adapter: ``predict`` loads it with ``load_policy_from_step``),
``grpo_log.jsonl`` (metrics per step), ``curves.png``, ``eval.json`` (greedy reward / EX before and after).
"""

from __future__ import annotations

from typing import Any

from ..rl.grpo.config import GRPOConfig
from .base import Stage, StageContext
from .rl_loop import open_rl_inputs, run_rl_training

__all__ = ["STAGE", "GRPOConfig", "run"]

CURVES = ("reward", "exec_match", "frac_reward_zero_std", "reward_std", "clip_high", "clip_low", "kl", "entropy",
          "completion_length", "policy_loss", "rm_score")


def run(ctx: StageContext) -> dict[str, Any]:
    import torch

    from ..rl.grpo.trainer import GRPOTrainer
    from ..rl.reward_model import load_reward_model, score_texts
    from ..rl.rewards import ExecutionJudge
    from ..sql.sandbox import SandboxPool

    cfg: GRPOConfig = ctx.config
    seed = ctx.run_config.seed

    def rm_scorer_for(policy, tokenizer):
        """The reward model's scorer when the reward list has an ``rm`` term (the registry made rm an input)."""
        if not any(t.name == "rm" for t in cfg.rewards):
            return None
        reward_model = load_reward_model(ctx.input("rm"), policy, tokenizer)
        max_length = cfg.max_source_length + cfg.max_new_tokens

        def score_with_rm(batch, texts) -> list[float]:
            with torch.no_grad():
                return score_texts(reward_model, tokenizer, [e.prompt for e in batch], list(texts), max_length,
                                   keys=[e.db_id for e in batch]).tolist()

        return score_with_rm

    inputs = open_rl_inputs(ctx, cfg, algorithm="GRPO", train_prompts=cfg.train_prompts, before_adapter=rm_scorer_for)
    prepared, eval_train, eval_dev = inputs.prepared, inputs.eval_train, inputs.eval_dev

    pool = SandboxPool(cfg.sandbox.sandbox_processes)
    try:
        judge = ExecutionJudge(prepared / "database", timeout_s=cfg.sandbox.sql_timeout_s,
                               row_cap=cfg.sandbox.row_cap, pool=pool)
        trainer = GRPOTrainer(inputs.policy, inputs.tokenizer, inputs.examples, cfg, judge=judge,
                              rm_scorer=inputs.loaded, seed=seed)

        def evaluate(after: bool) -> dict[str, Any]:
            result: dict[str, Any] = {}
            if eval_train:
                result["train"] = trainer.evaluate(eval_train, cfg.eval_batch_size)
            if eval_dev:
                result["dev"] = trainer.evaluate(eval_dev, cfg.eval_batch_size)
            return result

        metrics = run_rl_training(ctx, trainer, max_steps=cfg.max_steps, save_steps=cfg.save_steps,
                                  logging_steps=cfg.logging_steps, evaluate=evaluate,
                                  progress_keys={"reward": "reward", "loss": "policy_loss", "kl": "kl"},
                                  curves=CURVES, title="GRPO", sft_ref=inputs.sft_ref)
    finally:
        pool.close()

    last = trainer.history[-min(5, len(trainer.history)):]
    metrics.update({
        "samples": trainer.global_step * cfg.batch_size * cfg.num_generations,
        "rollout_reward_first": trainer.history[0]["reward"],
        "rollout_reward_final": sum(r["reward"] for r in last) / len(last),
        "frac_reward_zero_std_final": sum(r["frac_reward_zero_std"] for r in last) / len(last),
    })
    return metrics


STAGE = Stage(name="grpo", config_cls=GRPOConfig, run=run,
              description="GRPO of the SFT policy with group-normalised execution rewards (no critic).")
