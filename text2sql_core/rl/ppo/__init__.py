"""PPO: actor + critic over adapters, GAE, clipped surrogates (config beside trainer, as TRL lays it out).

``config`` imports no torch: the run config reads it; ``trainer`` holds the loop.
"""

from .config import PPOConfig, RewardConfig

__all__ = ["PPOConfig", "RewardConfig"]
