"""Settings every RL algorithm shares, declared once (each algorithm's config extends them).

Grouped as TRL groups its configs: what a step consumes, the adapter trained, the optimiser, the
greedy evaluations before and after training, and bookkeeping. Field names are those the ppo
stage has always used, so a config written for one algorithm reads the same for another.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..config_base import StageConfigBase

__all__ = ["OnlineRLConfigBase", "RLConfigBase", "SandboxConfig"]


class SandboxConfig(BaseModel):
    """Where sampled SQL runs: the watched sandbox workers that compute execution rewards."""

    model_config = ConfigDict(extra="forbid")

    sql_timeout_s: float = Field(5.0, gt=0, description="Per-query execution timeout in the SQL sandbox.")
    row_cap: int = Field(10_000, ge=1, description="Results with more rows count as errors.")
    sandbox_processes: int = Field(2, ge=1, description="Sandbox worker processes executing sampled SQL.")


class RLConfigBase(StageConfigBase):
    """Knobs of every RL algorithm (PPO, GRPO, DPO)."""

    # --- Steps: a step is one optimiser update of the policy on one batch
    max_steps: int = Field(100, ge=1, description="Training steps.")
    batch_size: int = Field(16, ge=1, description="Items (prompts, or pairs for DPO) per step.")
    max_source_length: int = Field(1024, ge=8, description="Prompt tokens kept (the beginning is cut first).")
    max_new_tokens: int = Field(128, ge=1, description="Longest generated SQL, in tokens.")
    copy_values: bool = Field(False, description="Generate (and evaluate) under predict's value-copy constraint: "
                                                 "quoted values and compared numbers come from the question. Set it "
                                                 "when predict uses `copy_values`, so RL trains the answers the "
                                                 "deployed policy gives.")
    # --- The adapter RL trains on top of the (merged) SFT policy; disabled, it is the reference
    lora_r: int = Field(16, ge=1, description="LoRA rank of the RL adapter.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (update scaled by alpha / r).")
    lora_target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters: `all-linear` or a list of module names.")
    # --- Optimisation
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    # --- Greedy evaluation before and after training (the pipeline's evaluate step is the official figure)
    eval_train_prompts: int = Field(64, ge=0, description="Training prompts (a seeded sample) whose greedy answers "
                                                          "measure the reward before and after RL; 0 skips it.")
    eval_dev_prompts: int = Field(0, ge=0, description="Dev prompts whose greedy answers measure held-out EX "
                                                       "before and after RL; 0 skips it.")
    eval_batch_size: int = Field(32, ge=1, description="Prompts generated together in these evaluations.")
    # --- Bookkeeping
    save_steps: int = Field(20, ge=1, description="Publish a checkpoint every N steps; a rerun resumes there.")
    logging_steps: int = Field(1, ge=1, description="Record metrics every N steps.")
    num_threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: all cores.")


class OnlineRLConfigBase(RLConfigBase):
    """Algorithms that sample their own completions during training (PPO, GRPO)."""

    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass of the rollouts.")
    train_prompts: int | None = Field(None, ge=1, description="Use only the first N training prompts (quick runs, "
                                                                 "tests); default all.")
