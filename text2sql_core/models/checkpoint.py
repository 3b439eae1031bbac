"""Training state on disk, written once for every trainer (sft, rm, ppo, grpo, dpo).

A resumed run must continue exactly where the killed one stopped: the trainable tensors, the
optimizer moments, the step counter and every random number generator (Python, NumPy, torch) go
into one ``torch.save`` file written atomically (temp file, then rename), so a kill during the
write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "STATE_FILE",
    "load_trainable_state",
    "load_training_state",
    "restore_rng",
    "rng_state",
    "save_training_state",
    "trainable_state",
]

STATE_FILE = "trainer_state.pt"


def rng_state() -> dict[str, Any]:
    """Every generator a training step draws from."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The parameters that training changes (adapters, heads): all a checkpoint needs of a model."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_trainable_state(model, state: dict[str, torch.Tensor], *, what: str = "model") -> None:
    """Copy saved trainable tensors back; a different set of names is an error, not a partial load."""
    params = dict(model.named_parameters())
    differ = set(state) ^ {n for n, p in params.items() if p.requires_grad}
    if differ:
        raise ValueError(f"checkpoint's {what} parameters do not match the model: {sorted(differ)[:5]}")
    for name, value in state.items():
        params[name].copy_(value)


def save_training_state(directory: Path, state: dict[str, Any], *, step: int) -> Path:
    """Write ``state`` (plus the RNG state) to ``directory/trainer_state.pt`` atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / STATE_FILE
    tmp = directory / (STATE_FILE + ".tmp")
    torch.save({**state, "rng": rng_state()}, tmp)
    tmp.replace(target)
    (directory / "trainer_state.json").write_text(json.dumps({"global_step": step}) + "\n")
    return target


def load_training_state(directory: Path, *, restore_generators: bool = True) -> dict[str, Any]:
    """Read a state written by :func:`save_training_state`; restores the RNGs unless told not to."""
    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)
    if restore_generators and "rng" in state:
        restore_rng(state["rng"])
    return state
