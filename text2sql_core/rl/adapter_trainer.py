"""What GRPO and DPO share: one policy whose LoRA adapter is the only thing trained, with AdamW.

Both hold the SFT policy with a fresh adapter (its reference is the same network with the adapter
off), take AdamW steps on the adapter's parameters, record one metrics dict per step, publish the
adapter in PEFT format and checkpoint ``(step, adapter, optimizer, history, RNGs)``. PPO trains two
networks (actor and critic) and keeps its own set-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..models.checkpoint import (
    load_trainable_state,
    load_training_state,
    save_training_state,
    trainable_state,
)

__all__ = ["AdapterTrainer"]


class AdapterTrainer:
    """The set-up, publishing and checkpoints of a trainer of one policy adapter; subclasses add ``step``."""

    #: the checkpoint key of the adapter's tensors (kept per algorithm so older checkpoints still load)
    state_key = "adapter"
    #: how errors name the trained part
    what = "policy adapter"

    def __init__(self, policy, tokenizer, config: Any, *, seed: int = 0) -> None:
        self.policy = policy
        self.tokenizer = tokenizer
        self.cfg = config
        self.seed = seed
        self.global_step = 0
        self.world = distributed.world()
        self.params = [p for p in policy.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the policy needs trainable (adapter) parameters")
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.device = next(policy.parameters()).device
        self.history: list[dict[str, Any]] = []

    def publish_actor(self, directory: Path) -> None:
        """Save the policy's adapter (PEFT format); the SFT base is not copied."""
        self.policy.save_pretrained(str(directory))

    def state_dict(self) -> dict[str, Any]:
        return {"global_step": self.global_step, self.state_key: trainable_state(self.policy),
                "optimizer": self.optimizer.state_dict(), "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_trainable_state(self.policy, state[self.state_key], what=self.what)
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
        self.global_step = int(state["global_step"])

    def save(self, directory: Path) -> Path:
        """The full training state (adapter, optimizer, step, history, RNGs), written atomically."""
        return save_training_state(directory, self.state_dict(), step=self.global_step)

    def load(self, directory: Path) -> None:
        self.load_state_dict(load_training_state(directory))

    def optimizer_steps(self) -> int:
        """Adam steps taken so far (a restored count proves a real resume)."""
        states = [s for s in self.optimizer.state.values() if "step" in s]
        return int(states[0]["step"]) if states else 0
