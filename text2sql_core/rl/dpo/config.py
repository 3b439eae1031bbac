"""DPO's settings (the ``stages.dpo`` section), beside its trainer as TRL keeps ``DPOConfig`` beside ``DPOTrainer``."""

from __future__ import annotations

from pydantic import Field

from ..config import RLConfigBase, SandboxConfig

__all__ = ["DPOConfig"]


class DPOConfig(RLConfigBase):
    """Offline DPO on the rm_data step's (gold, wrong SQL) pairs; defaults after Rafailov et al. and TRL.

    DPO samples nothing while it trains: ``max_new_tokens`` caps the scored answers (longer ones are
    cut) and the greedy answers of the EX evaluations, ``copy_values`` applies to those evaluations.
    """

    # --- Pairs (rm_data's train_pairs.jsonl; its eval_pairs.jsonl is the held-out split, by prompt)
    max_steps: int = Field(100, ge=1, description="DPO steps; each trains on batch_size pairs.")
    batch_size: int = Field(16, ge=1, description="Preference pairs per step (chosen and rejected scored "
                                                   "together). Global: split evenly over the ranks under torchrun "
                                                   "(a multiple of the world size).")
    train_pairs: int | None = Field(None, ge=1, description="Use only the first N training pairs (quick runs, "
                                                              "tests); default all.")
    eval_pairs: int | None = Field(None, ge=0, description="Held-out pairs (rm_data's eval split) scored for the "
                                                             "pairwise accuracy; default all, 0 skips it.")
    eval_steps: int = Field(25, ge=1, description="Score the held-out pairs every N steps (and at the end).")
    # --- Objective
    beta: float = Field(0.1, gt=0, description="beta: strength of the implicit KL to the reference (the SFT "
                                               "policy); the implicit reward is beta x log-ratio.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Conservative DPO: the assumed share of pairs "
                                                                  "whose preference label is wrong (0: plain DPO).")
    rpo_alpha: float = Field(0.0, ge=0, description="Weight of an SFT term (mean token NLL of the chosen answer) "
                                                    "added to the DPO loss (RPO); 0 turns it off. Plain DPO lowers "
                                                    "the chosen answers' log-probs too (on the demo's under-trained "
                                                    "policy greedy dev EX fell 0.41 -> 0.22); 1 kept EX.")
    # --- Optimisation
    learning_rate: float = Field(5e-4, gt=0, description="Learning rate of the DPO adapter (AdamW).")
    # --- Where the greedy answers of the EX evaluations run
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig, description="SQL sandbox of the EX evaluations.")
