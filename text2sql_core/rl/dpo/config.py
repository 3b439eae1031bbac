"""DPO's settings (the ``stages.dpo`` section), beside its trainer as TRL keeps ``DPOConfig`` beside ``DPOTrainer``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...config_base import StageConfigBase

__all__ = ["DPOConfig"]


class DPOConfig(StageConfigBase):
    """Offline DPO on the rm_data step's (gold, wrong SQL) pairs; defaults after Rafailov et al. and TRL."""

    # Pairs
    max_steps: int = Field(200, ge=1, description="DPO steps; each trains on batch_size pairs.")
    batch_size: int = Field(16, ge=1, description="Preference pairs per step (chosen and rejected scored together).")
    train_pairs: int | None = Field(None, ge=1, description="Use only the first N training pairs (quick runs, "
                                                              "tests); default all.")
    eval_pairs: int | None = Field(None, ge=0, description="Held-out pairs (rm_data's eval split) scored for the "
                                                             "pairwise accuracy; default all, 0 skips it.")
    max_source_length: int = Field(1024, ge=8, description="Prompt tokens kept (the beginning is cut first).")
    max_new_tokens: int = Field(128, ge=1, description="Longest scored answer in tokens (longer ones are cut) and "
                                                       "longest greedy answer in the EX evaluations.")
    # Objective
    beta: float = Field(0.1, gt=0, description="beta: strength of the implicit KL to the reference (the SFT "
                                               "policy); the implicit reward is beta x log-ratio.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Conservative DPO: the assumed share of pairs "
                                                                  "whose preference label is wrong (0: plain DPO).")
    rpo_alpha: float = Field(0.0, ge=0, description="Weight of an SFT term (mean token NLL of the chosen answer) "
                                                    "added to the DPO loss (RPO); 0 turns it off.")
    # Adapter and optimisation
    learning_rate: float = Field(5e-4, gt=0, description="Learning rate of the DPO adapter (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    lora_r: int = Field(16, ge=1, description="LoRA rank of the DPO adapter.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (update scaled by alpha / r).")
    lora_target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters: `all-linear` or a list of module names.")
    # Evaluation
    eval_steps: int = Field(50, ge=1, description="Score the held-out pairs every N steps (and at the end).")
    eval_train_prompts: int = Field(64, ge=0, description="Training prompts (a seeded sample) whose greedy answers "
                                                          "measure EX before and after DPO; 0 skips it.")
    eval_dev_prompts: int = Field(0, ge=0, description="Dev prompts whose greedy answers measure held-out EX "
                                                       "before and after DPO (the pipeline's evaluate step is the "
                                                       "official figure); 0 skips it.")
    eval_batch_size: int = Field(32, ge=1, description="Pairs scored / prompts generated together in evaluations.")
    copy_values: bool = Field(False, description="Decode the greedy evaluation answers under predict's value-copy "
                                                 "constraint, as predict does with `copy_values`.")
    # Bookkeeping
    save_steps: int = Field(20, ge=1, description="Publish a checkpoint every N DPO steps; a rerun resumes there.")
    logging_steps: int = Field(1, ge=1, description="Report progress every N DPO steps.")
    num_threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: all cores.")
    sql_timeout_s: float = Field(5.0, gt=0, description="Per-query execution timeout in the SQL sandbox (EX).")
    row_cap: int = Field(10_000, ge=1, description="Results with more rows count as errors.")
    sandbox_processes: int = Field(2, ge=1, description="Sandbox worker processes executing greedy SQL.")
