"""GRPO settings (``stages.grpo``): defaults after TRL's GRPOConfig and Arctic-Text2SQL-R1, scaled to small models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...config_base import StageConfigBase

__all__ = ["GRPOConfig", "RewardTerm"]


class RewardTerm(BaseModel):
    """One weighted reward function of the list; the completion's reward is the weighted sum."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["execution", "graded_execution", "syntax"] = Field(
        description="`graded_execution`: 1 result matches gold, 0.1 runs but differs, 0 does not run (Arctic); "
                    "`execution`: 1 match, 0 otherwise; `syntax`: 1 when the SQL runs.")
    weight: float = Field(1.0, description="Weight of this term in the reward.")


class GRPOConfig(StageConfigBase):
    """GRPO: G sampled completions per prompt, advantages normalised within each group, no critic."""

    # Rollouts
    max_steps: int = Field(100, ge=1, description="GRPO steps; each samples num_generations completions of "
                                                  "batch_size prompts.")
    batch_size: int = Field(8, ge=1, description="Prompts per step.")
    num_generations: int = Field(8, ge=2, description="G: completions sampled per prompt (a group). Arctic: 16.")
    max_new_tokens: int = Field(128, ge=1, description="Longest sampled SQL, in tokens.")
    max_source_length: int = Field(1024, ge=8, description="Prompt tokens kept (the beginning is cut first).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the completions.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass of the completions.")
    copy_values: bool = Field(False, description="Sample (and evaluate) under predict's value-copy constraint; the "
                                                 "constrained positions are scored as the constrained policy.")
    train_prompts: int | None = Field(None, ge=1, description="Use only the first N training prompts; default all.")
    # Objective
    rewards: list[RewardTerm] = Field(
        default_factory=lambda: [RewardTerm(name="graded_execution", weight=1.0)],
        description="Weighted reward functions; the reward of a completion is their weighted sum.")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide the centred rewards by the group's std (DeepSeekMath), the batch's, or "
                             "nothing (Dr. GRPO).")
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = Field(
        "dapo", description="Token normalisation: `grpo` per-sequence mean then mean; `dr_grpo` sum / (rows x "
                            "max_new_tokens); `dapo` sum / tokens in the batch.")
    epsilon: float = Field(0.2, gt=0, lt=1, description="Lower clip of the importance ratio (1 - epsilon).")
    epsilon_high: float | None = Field(
        None, gt=0, description="Upper clip (1 + epsilon_high); default epsilon. DAPO's clip-higher: 0.28.")
    beta: float = Field(0.0, ge=0, description="KL coefficient to the reference (the SFT policy: adapter off), k3 "
                                               "estimator. 0: the reference is never run.")
    mask_truncated_completions: bool = Field(
        False, description="Completions cut at max_new_tokens (no EOS) are left out of the loss (DAPO).")
    num_iterations: int = Field(1, ge=1, description="Optimisation passes per generation batch; above 1 the ratio "
                                                     "to the sampling policy's log-probabilities is clipped.")
    mini_batch_size: int | None = Field(
        None, ge=1, description="Completions per forward/backward pass (gradients accumulate over the batch, so "
                                "the loss is the same); default all of them.")
    # Optimisation
    learning_rate: float = Field(5e-4, gt=0, description="Learning rate of the policy's adapter.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    lora_r: int = Field(16, ge=1, description="LoRA rank of the policy's new adapter.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (update scaled by alpha / r).")
    lora_target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters: `all-linear` or a list of module names.")
    # Evaluation (greedy answers, before and after training)
    eval_train_prompts: int = Field(64, ge=0, description="Training prompts (a seeded sample) whose greedy answers "
                                                          "measure the reward before and after; 0 skips it.")
    eval_dev_prompts: int = Field(0, ge=0, description="Dev prompts whose greedy answers measure held-out EX before "
                                                       "and after; 0 skips it.")
    eval_batch_size: int = Field(32, ge=1, description="Prompts generated together in these evaluations.")
    # Bookkeeping
    save_steps: int = Field(20, ge=1, description="Publish a checkpoint every N steps; a rerun resumes there.")
    logging_steps: int = Field(1, ge=1, description="Report progress every N steps.")
    num_threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: all cores.")
    # SQL sandbox
    sql_timeout_s: float = Field(5.0, gt=0, description="Per-query execution timeout in the SQL sandbox.")
    row_cap: int = Field(10_000, ge=1, description="Results with more rows count as errors.")
    sandbox_processes: int = Field(2, ge=1, description="Sandbox worker processes executing sampled SQL.")

    @model_validator(mode="after")
    def _consistent(self) -> GRPOConfig:
        if not self.rewards:
            raise ValueError("`rewards` is empty; give at least one term, e.g. [{name: graded_execution}]")
        names = [t.name for t in self.rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"`rewards` names a function twice: {names}; give each term once")
        rows = self.batch_size * self.num_generations
        if self.mini_batch_size is not None and rows % self.mini_batch_size:
            raise ValueError(f"`mini_batch_size` {self.mini_batch_size} must divide batch_size x num_generations "
                             f"= {rows}; set a divisor or leave it unset")
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ValueError(f"`epsilon_high` {self.epsilon_high} is below `epsilon` {self.epsilon}; clip-higher "
                             "needs epsilon_high >= epsilon (DAPO: 0.28 with 0.2)")
        return self
