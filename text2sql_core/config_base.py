"""The base of every settings model (stage kinds, RL algorithms): unknown keys are errors.

It lives outside ``stages/`` so that ``rl/`` and ``models/`` can declare their configs beside their
trainers without importing the stage adapters.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["StageConfigBase"]


class StageConfigBase(BaseModel):
    """Base of every stage kind's config: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
