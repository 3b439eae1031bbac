"""The ``ppo`` stage kind (``rl.algorithm: ppo``): a thin adapter around :mod:`text2sql_core.rl.ppo`.

Models (InstructGPT / DeepSpeed-Chat layout, with adapters so nothing is copied twice):

* actor: the SFT model plus a new LoRA adapter; the *reference* policy is the same model with the
  adapter disabled (no second copy);
* critic: the reward model plus its own LoRA adapter, its score head read at every token as the
  value; the frozen *reward model* is the same network with the critic adapter disabled.

Each step samples one completion per prompt for ``batch_size`` training prompts (generation batch =
training batch unless ``mini_batch_size`` says otherwise), scores them (``reward.mode``: ``rm``,
``execution`` or ``hybrid``), subtracts a per-token KL penalty against the reference, computes GAE
advantages and runs ``ppo_epochs`` of clipped policy and value updates. Logged per step: reward,
KL, entropy, value loss, response length (``metrics.jsonl``, ``curves.png``). Checkpoints hold both
adapters, both optimizers, the EMA actor, the step and every RNG; a rerun resumes from the newest.

Published: ``adapter/`` (the actor's LoRA adapter, the EMA one with ``ema``), ``model_ref.json`` (the
SFT lineage plus this adapter: ``predict`` loads it with ``load_policy_from_step``), ``ppo_log.jsonl``
(metrics per step), ``curves.png``, ``eval.json`` (greedy reward / EX before and after).
"""

from __future__ import annotations

from typing import Any

from ..errors import BadInput
from ..rl.ppo.config import PPOConfig, build_deepspeed_config
from .base import Stage, StageContext
from .rl_loop import open_rl_inputs, run_rl_training

__all__ = ["STAGE", "PPOConfig", "build_deepspeed_config", "run"]


CURVES = ("reward", "kl", "entropy", "value_loss", "response_length", "exec_match", "rm_score", "policy_loss")


def _check_deepspeed(cfg: PPOConfig) -> dict[str, Any] | None:
    if cfg.deepspeed is None:
        return None
    import torch

    ds = build_deepspeed_config(cfg.deepspeed, micro_batch_size=cfg.mini_batch_size or cfg.batch_size,
                                max_grad_norm=cfg.max_grad_norm)
    if not torch.cuda.is_available():
        stage = ds.get("zero_optimization", {}).get("stage", 0)
        raise BadInput(f"ppo.deepspeed (ZeRO stage {stage}) needs CUDA GPUs and none is visible; remove "
                       "`ppo.deepspeed` to train on CPU", field="ppo.deepspeed")
    return ds


def run(ctx: StageContext) -> dict[str, Any]:
    from ..rl.ppo.trainer import PPOTrainer
    from ..rl.reward_model import add_lora, load_reward_model
    from ..rl.rewards import ExecutionJudge
    from ..sql.sandbox import SandboxPool

    cfg: PPOConfig = ctx.config
    seed = ctx.run_config.seed
    ds_config = _check_deepspeed(cfg)
    inputs = open_rl_inputs(ctx, cfg, algorithm="PPO", train_prompts=cfg.train_prompts,
                            before_adapter=lambda policy, tokenizer: load_reward_model(ctx.input("rm"), policy,
                                                                                       tokenizer))
    prepared, examples, eval_train, eval_dev = inputs.prepared, inputs.examples, inputs.eval_train, inputs.eval_dev
    actor, tokenizer = inputs.policy, inputs.tokenizer
    critic = add_lora(inputs.loaded, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=0.0,
                      target_modules=cfg.lora_target_modules, task="SEQ_CLS").eval()

    needs_sql = cfg.reward.mode != "rm" or bool(eval_train) or bool(eval_dev)
    pool = SandboxPool(cfg.reward.sandbox_processes) if needs_sql else None
    try:
        judge = (ExecutionJudge(prepared / "database", timeout_s=cfg.reward.sql_timeout_s,
                                row_cap=cfg.reward.row_cap, pool=pool) if pool is not None else None)
        trainer = PPOTrainer(actor, critic, tokenizer, examples, cfg, judge=judge, seed=seed,
                             deepspeed_config=ds_config)

        def evaluate(after: bool) -> dict[str, Any]:
            use_ema = after and cfg.ema
            result: dict[str, Any] = {}
            if eval_train:
                result["train"] = trainer.evaluate(eval_train, cfg.eval_batch_size, use_ema=use_ema)
            if eval_dev:
                result["dev"] = trainer.evaluate(eval_dev, cfg.eval_batch_size, use_ema=use_ema)
            return result

        metrics = run_rl_training(ctx, trainer, max_steps=cfg.max_steps, save_steps=cfg.save_steps,
                                  logging_steps=cfg.logging_steps, evaluate=evaluate,
                                  progress_keys={"reward": "reward", "kl": "kl", "loss": "policy_loss"},
                                  curves=CURVES, title="PPO", sft_ref=inputs.sft_ref)
    finally:
        if pool is not None:
            pool.close()

    last = trainer.history[-min(5, len(trainer.history)):]
    metrics.update({
        "actor_optimizer_steps": trainer.optimizer_steps(),
        "kl_final": sum(r["kl"] for r in last) / len(last),
        "rollout_reward_first": trainer.history[0]["reward"],
        "rollout_reward_final": sum(r["reward"] for r in last) / len(last),
    })
    return metrics


STAGE = Stage(name="ppo", config_cls=PPOConfig, run=run,
              description="PPO of the SFT policy against the reward model and/or execution reward.")
