"""Stage kinds, one module each (``stages/<kind>.py`` holds ``<Kind>Config`` and ``run``).

Modules are imported on demand so that loading the registry does not import torch.
"""

from __future__ import annotations

import importlib

from .base import Stage, StageConfigBase, StageContext, run_step

__all__ = ["KINDS", "Stage", "StageConfigBase", "StageContext", "load_registry", "load_stage", "run_step"]

#: every stage kind, in pipeline order
KINDS: tuple[str, ...] = ("prepare", "sft", "predict", "evaluate", "rm_data", "rm", "ppo")


def load_stage(kind: str) -> Stage:
    module = importlib.import_module(f"{__name__}.{kind}")
    stage = module.STAGE
    if stage.name != kind:  # a copy-paste slip would otherwise run the wrong code
        raise RuntimeError(f"stages/{kind}.py declares STAGE.name={stage.name!r}")
    return stage


def load_registry() -> dict[str, Stage]:
    return {kind: load_stage(kind) for kind in KINDS}
