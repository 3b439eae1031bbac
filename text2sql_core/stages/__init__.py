"""Stage adapters, one module per kind of :mod:`text2sql_core.registry` (``run(ctx)`` and ``STAGE``).

Modules are imported on demand so that loading the registry does not import torch.
"""

from __future__ import annotations

import importlib

from ..registry import get_kind, kind_names
from .base import Stage, StageConfigBase, StageContext, run_step

__all__ = ["KINDS", "Stage", "StageConfigBase", "StageContext", "load_registry", "load_stage", "run_step"]

#: every stage kind, in registry order
KINDS: tuple[str, ...] = tuple(kind_names())


def load_stage(kind: str) -> Stage:
    module = importlib.import_module(get_kind(kind).module_path)
    stage = module.STAGE
    if stage.name != kind:  # a copy-paste slip would otherwise run the wrong code
        raise RuntimeError(f"{module.__name__} declares STAGE.name={stage.name!r}")
    return stage


def load_registry() -> dict[str, Stage]:
    return {kind: load_stage(kind) for kind in KINDS}
