"""PPO's settings (defaults after DeepSpeed-Chat step 3, scaled to small models).

The shared knobs (steps, adapter, evaluation, bookkeeping) come from
:class:`~text2sql_core.rl.config.OnlineRLConfigBase`; here: the batch layout, the reward, the KL
penalty, GAE, the clipped surrogates and the critic.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...errors import BadInput
from ..config import OnlineRLConfigBase

__all__ = ["PPOConfig", "RewardConfig", "build_deepspeed_config"]


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


class PPOConfig(OnlineRLConfigBase):
    """PPO settings (defaults after DeepSpeed-Chat step 3, scaled to small models)."""

    # --- Batch layout
    mini_batch_size: int | None = Field(
        None, ge=1, description="Experiences per optimisation step; default batch_size (generation batch = "
                                "training batch: DeepSpeed-Chat found other settings unstable).")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout batch.")
    # --- Objective: reward, KL penalty, GAE, clipped surrogates
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
    # --- Optimisation: actor and critic
    actor_learning_rate: float = Field(5e-4, gt=0, description="Learning rate of the actor adapter.")
    critic_learning_rate: float = Field(5e-4, gt=0, description="Learning rate of the critic adapter and head.")
    ema: bool = Field(False, description="Keep an exponential moving average of the actor adapter and publish it.")
    ema_decay: float = Field(0.992, gt=0, lt=1, description="EMA decay per step (DeepSpeed-Chat: 0.992).")
    deepspeed: dict[str, Any] | None = Field(
        None, description="DeepSpeed config for actor and critic (e.g. `{zero_optimization: {stage: 2}}`); "
                          "ZeRO-2/3 needs CUDA GPUs.")

    @model_validator(mode="after")
    def _mini_batch_divides(self) -> PPOConfig:
        if self.mini_batch_size is not None and self.batch_size % self.mini_batch_size:
            raise ValueError(f"`mini_batch_size` {self.mini_batch_size} must divide `batch_size` "
                             f"{self.batch_size}; set mini_batch_size to a divisor or leave it unset")
        return self


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
