"""The ``ppo`` stage: RLHF of the SFT policy with our own PPO loop.

TRL's PPOTrainer is not an option: TRL moved it to ``trl.experimental.ppo`` (huggingface/trl#4482), then
dropped the old import path (#5051) and deleted it (#7020).

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

import json
import random
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import BadInput
from .base import Stage, StageConfigBase, StageContext

__all__ = ["STAGE", "PPOConfig", "RewardConfig", "run"]


class RewardConfig(BaseModel):
    """What a sampled SQL query earns; see :mod:`text2sql_core.rl.rewards`."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["rm", "execution", "hybrid"] = Field(
        "hybrid", description="`rm`: reward-model score; `execution`: execution match with gold in the SQL "
                              "sandbox; `hybrid`: RM score + execution_weight x execution reward.")
    execution_weight: float = Field(1.0, ge=0, description="Weight of the execution reward in `hybrid` mode.")
    match: float = Field(1.0, description="Execution reward when the result equals the gold result.")
    mismatch: float = Field(0.0, description="Execution reward when the query runs but its result differs.")
    error: float = Field(-0.5, description="Execution reward when the query does not run (error, timeout, "
                                           "row cap).")
    clip: float = Field(5.0, gt=0, description="The sequence reward is clipped to [-clip, clip].")
    sql_timeout_s: float = Field(5.0, gt=0, description="Per-query execution timeout in the SQL sandbox.")
    row_cap: int = Field(10_000, ge=1, description="Results with more rows count as errors.")
    sandbox_processes: int = Field(2, ge=1, description="Sandbox worker processes executing sampled SQL.")


class PPOConfig(StageConfigBase):
    """PPO settings (defaults after DeepSpeed-Chat step 3, scaled to small models)."""

    # Rollouts
    max_steps: int = Field(100, ge=1, description="PPO steps; each samples batch_size prompts once.")
    batch_size: int = Field(16, ge=1, description="Prompts per step, generated together (generation batch).")
    mini_batch_size: int | None = Field(
        None, ge=1, description="Experiences per optimisation step; default batch_size (generation batch = "
                                "training batch: DeepSpeed-Chat found other settings unstable).")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout batch.")
    max_new_tokens: int = Field(128, ge=1, description="Longest sampled SQL, in tokens.")
    max_source_length: int = Field(1024, ge=8, description="Prompt tokens kept (the beginning is cut first).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass of the rollouts.")
    copy_values: bool = Field(False, description="Roll out (and evaluate) under predict's value-copy constraint: "
                                                 "quoted values and compared numbers come from the question. Set it "
                                                 "when predict uses `copy_values`, so PPO trains the answers the "
                                                 "deployed policy gives.")
    train_prompts: int | None = Field(None, ge=1, description="Use only the first N training prompts (quick runs, "
                                                                 "tests); default all.")
    # Objective
    reward: RewardConfig = Field(default_factory=RewardConfig, description="Reward mode and execution rewards.")
    kl_coef: float = Field(0.05, ge=0, description="beta: per-token KL penalty against the reference policy.")
    kl_estimator: Literal["k1", "abs", "mse", "k3"] = Field("k1", description="Per-token KL estimator.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount of GAE.")
    lam: float = Field(0.95, ge=0, le=1, description="lambda of GAE.")
    clip_range: float = Field(0.2, gt=0, description="PPO ratio clip epsilon (policy loss).")
    clip_range_value: float = Field(0.2, gt=0, description="Value clip epsilon (value loss).")
    whiten_advantages: bool = Field(True, description="Normalise advantages over each batch's response tokens.")
    critic_warmup_steps: int = Field(
        0, ge=0, description="The first N PPO steps train only the critic (the actor is not updated): the critic "
                             "starts as the reward model, whose scale is not that of the returns, and its early "
                             "values would turn the first advantages into noise.")
    # Optimisation
    actor_learning_rate: float = Field(5e-4, gt=0, description="Learning rate of the actor adapter.")
    critic_learning_rate: float = Field(5e-4, gt=0, description="Learning rate of the critic adapter and head.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (both optimizers).")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm (each model).")
    lora_r: int = Field(16, ge=1, description="LoRA rank of the actor and critic adapters.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (update scaled by alpha / r).")
    lora_target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters: `all-linear` or a list of module names.")
    ema: bool = Field(False, description="Keep an exponential moving average of the actor adapter and publish it.")
    ema_decay: float = Field(0.992, gt=0, lt=1, description="EMA decay per step (DeepSpeed-Chat: 0.992).")
    deepspeed: dict[str, Any] | None = Field(
        None, description="DeepSpeed config for actor and critic (e.g. `{zero_optimization: {stage: 2}}`); "
                          "ZeRO-2/3 needs CUDA GPUs.")
    # Evaluation (greedy answers, before and after training)
    eval_train_prompts: int = Field(64, ge=0, description="Training prompts (a seeded sample) whose greedy answers "
                                                          "measure the reward before and after PPO; 0 skips it.")
    eval_dev_prompts: int = Field(0, ge=0, description="Dev prompts whose greedy answers measure held-out EX "
                                                       "before and after PPO (the pipeline's evaluate step is the "
                                                       "official figure); 0 skips it.")
    eval_batch_size: int = Field(32, ge=1, description="Prompts generated together in these evaluations.")
    # Bookkeeping
    save_steps: int = Field(20, ge=1, description="Publish a checkpoint every N PPO steps; a rerun resumes there.")
    logging_steps: int = Field(1, ge=1, description="Record metrics every N PPO steps.")
    num_threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: all cores.")

    @model_validator(mode="after")
    def _mini_batch_divides(self) -> PPOConfig:
        if self.mini_batch_size is not None and self.batch_size % self.mini_batch_size:
            raise ValueError(f"`mini_batch_size` {self.mini_batch_size} must divide `batch_size` "
                             f"{self.batch_size}; set mini_batch_size to a divisor or leave it unset")
        return self


CURVES = ("reward", "kl", "entropy", "value_loss", "response_length", "exec_match", "rm_score", "policy_loss")


def build_deepspeed_config(user: dict[str, Any], *, micro_batch_size: int, max_grad_norm: float) -> dict[str, Any]:
    """The DeepSpeed config for actor and critic: the user's settings, with the batch sizes PPO dictates.

    One PPO optimisation step is one mini-batch on one device (no gradient accumulation), and gradient
    clipping is DeepSpeed's once an engine owns the optimizer step.
    """
    config = json.loads(json.dumps(user))  # deep copy, JSON values only
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise BadInput(f"zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}", field="ppo.deepspeed")
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        if key in config and key != "train_micro_batch_size_per_gpu":
            raise BadInput(f"`{key}` is set by PPO (mini_batch_size); remove it", field=f"ppo.deepspeed.{key}")
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    config["gradient_accumulation_steps"] = 1
    config.setdefault("gradient_clipping", max_grad_norm)
    return config


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


def _plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """One small panel per logged quantity against the PPO step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in CURVES if any(k in r for r in history)]
    cols = 3
    rows = max(1, (len(keys) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        points = [(r["step"], r[key]) for r in history if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], lw=1.2)
        ax.set_title(key)
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)


def _examples(rows: list[dict[str, Any]]):
    from ..rl.ppo_trainer import PromptExample

    return [PromptExample(r["prompt"], r["db_id"], r["query"]) for r in rows]


def run(ctx: StageContext) -> dict[str, Any]:
    import torch

    from ..models.loading import load_policy_from_step, read_model_ref, write_model_ref
    from ..rl.ppo_trainer import PPOTrainer
    from ..rl.reward_model import add_lora, load_reward_model
    from ..rl.rewards import ExecutionJudge
    from ..sql.sandbox import SandboxPool
    from .rm_data import read_prompts

    cfg: PPOConfig = ctx.config
    seed = ctx.run_config.seed
    ds_config = _check_deepspeed(cfg)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    prepared = ctx.input("prepare")
    train_rows = read_prompts(prepared, "train")[:cfg.train_prompts]
    examples = _examples(train_rows)
    eval_train = random.Random(seed).sample(examples, min(cfg.eval_train_prompts, len(examples)))
    eval_dev = _examples(read_prompts(prepared, "dev")[:cfg.eval_dev_prompts]) if cfg.eval_dev_prompts else []

    torch.manual_seed(seed)
    sft_ref = read_model_ref(ctx.input("sft"))
    policy, tokenizer = load_policy_from_step(ctx, "sft")
    if hasattr(policy, "merge_and_unload"):  # a quantized base keeps its SFT adapter attached
        raise BadInput("PPO needs the SFT adapters merged into the base; 4-bit (QLoRA) policies are not "
                       "supported by the ppo stage: set model.quantization: none", field="model.quantization")
    reward_model = load_reward_model(ctx.input("rm"), policy, tokenizer)
    actor = add_lora(policy, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=0.0,
                     target_modules=cfg.lora_target_modules, task="CAUSAL_LM").eval()
    critic = add_lora(reward_model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=0.0,
                      target_modules=cfg.lora_target_modules, task="SEQ_CLS").eval()

    needs_sql = cfg.reward.mode != "rm" or bool(eval_train) or bool(eval_dev)
    pool = SandboxPool(cfg.reward.sandbox_processes) if needs_sql else None
    try:
        judge = (ExecutionJudge(prepared / "database", timeout_s=cfg.reward.sql_timeout_s,
                                row_cap=cfg.reward.row_cap, pool=pool) if pool is not None else None)
        trainer = PPOTrainer(actor, critic, tokenizer, examples, cfg, judge=judge, seed=seed,
                             deepspeed_config=ds_config)
        latest = ctx.checkpoints.latest()
        resumed_from = 0
        baseline: dict[str, Any] = {}
        if latest is not None:
            resumed_from, ckpt = latest
            trainer.load(ckpt)
            baseline = json.loads((ckpt / "baseline.json").read_text())
            ctx.log.info("ppo resumed", step=resumed_from, actor_optimizer_steps=trainer.optimizer_steps())
        else:
            ctx.log.info("evaluating the SFT policy before PPO", train_prompts=len(eval_train),
                         dev_prompts=len(eval_dev))
            if eval_train:
                baseline["train"] = trainer.evaluate(eval_train, cfg.eval_batch_size)
            if eval_dev:
                baseline["dev"] = trainer.evaluate(eval_dev, cfg.eval_batch_size)
        resume_record = {"event": "start", "resumed_from_step": resumed_from,
                         "actor_optimizer_steps": trainer.optimizer_steps()}

        from tqdm import tqdm

        bar = tqdm(total=cfg.max_steps, initial=trainer.global_step, desc="ppo", unit="step", file=sys.stderr,
                   leave=False)
        while trainer.global_step < cfg.max_steps:
            record = trainer.step()
            bar.update(1)
            step = trainer.global_step
            if step % cfg.logging_steps == 0 or step == cfg.max_steps:
                ctx.progress(step=step, total=cfg.max_steps, reward=record["reward"], kl=record["kl"],
                             loss=record["policy_loss"])
            if step % cfg.save_steps == 0 and step < cfg.max_steps:
                directory = ctx.workdir / "checkpoint_out" / f"{step:08d}"
                trainer.save(directory)
                (directory / "baseline.json").write_text(json.dumps(baseline) + "\n")
                ctx.checkpoints.save(step, directory, metrics={"reward": record["reward"], "kl": record["kl"]})
        bar.close()

        final: dict[str, Any] = {}
        if eval_train:
            final["train"] = trainer.evaluate(eval_train, cfg.eval_batch_size, use_ema=cfg.ema)
        if eval_dev:
            final["dev"] = trainer.evaluate(eval_dev, cfg.eval_batch_size, use_ema=cfg.ema)
    finally:
        if pool is not None:
            pool.close()

    out = ctx.output_dir
    trainer.publish_actor(out / "adapter")
    write_model_ref(out, sft_ref.with_adapter(ctx.step.name, "adapter"))
    (out / "ppo_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [resume_record, *trainer.history]))
    (out / "eval.json").write_text(json.dumps({"before": baseline, "after": final}, indent=2) + "\n")
    _plot_curves(trainer.history, out / "curves.png")

    last = trainer.history[-min(5, len(trainer.history)):]
    metrics: dict[str, Any] = {
        "steps": trainer.global_step,
        "resumed_from_step": resumed_from,
        "actor_optimizer_steps": trainer.optimizer_steps(),
        "kl_final": sum(r["kl"] for r in last) / len(last),
        "rollout_reward_first": trainer.history[0]["reward"],
        "rollout_reward_final": sum(r["reward"] for r in last) / len(last),
    }
    for split in ("train", "dev"):
        for when, source in (("before", baseline), ("after", final)):
            for key, value in source.get(split, {}).items():
                metrics[f"{split}_{key}_{when}"] = value
    return metrics


STAGE = Stage(name="ppo", config_cls=PPOConfig, run=run,
              description="PPO of the SFT policy against the reward model and/or execution reward.")
