"""GRPO's settings (``stages.grpo``): defaults after TRL's GRPOConfig and Arctic-Text2SQL-R1, scaled to small models.

The shared knobs (steps, adapter, evaluation, bookkeeping) come from
:class:`~text2sql_core.rl.config.OnlineRLConfigBase`; here: the group, the reward terms, the
advantage scaling, the loss normalisation, the clipped ratio and the KL to the reference.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..config import OnlineRLConfigBase, SandboxConfig
from ..rewards import RewardTerm

__all__ = ["GRPOConfig"]


class GRPOConfig(OnlineRLConfigBase):
    """GRPO: G sampled completions per prompt, advantages normalised within each group, no critic."""

    batch_size: int = Field(8, ge=1, description="Prompts per step; each gets num_generations completions. Global: "
                                                  "split evenly over the ranks under torchrun (a multiple of the "
                                                  "world size).")
    # --- The group
    num_generations: int = Field(8, ge=2, description="G: completions sampled per prompt (a group). Arctic: 16.")
    mini_batch_size: int | None = Field(
        None, ge=1, description="Completions per forward/backward pass (gradients accumulate over the batch, so "
                                "the loss is the same); default all of them. Global, like batch_size.")
    # --- Objective
    rewards: list[RewardTerm] = Field(
        default_factory=lambda: [RewardTerm(name="graded_execution", weight=1.0)],
        description="Weighted reward functions; a completion's reward is their weighted sum. Default: "
                    "graded_execution (1 result matches gold, 0.1 runs but differs, 0 does not run: Arctic). An "
                    "`rm` term adds the rm step to the graph.")
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
    # --- Optimisation
    learning_rate: float = Field(1e-3, gt=0, description="Learning rate of the policy's adapter.")
    # --- Where sampled SQL runs
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig, description="SQL sandbox of the rewards.")

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
