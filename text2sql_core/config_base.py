"""The base of every settings model (stage kinds, RL algorithms): unknown keys are errors, values strict.

It lives outside ``stages/`` so that ``rl/`` and ``models/`` can declare their configs beside their
trainers without importing the stage adapters.

Pydantic's lax mode turns ``true`` into 1, ``"1e26"`` into a float and accepts ``.inf``: each passes
validation and fails hours later (``OverflowError``, a 10^26-step loop). ``value_problems`` is the
one generic rule set, applied to every section of a run config when it is loaded and by
``StageConfigBase`` itself: numbers are numbers (no booleans, no strings, no floats for integers),
finite and of a sane magnitude; paths are not empty.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

__all__ = ["MAX_ABS_FLOAT", "MAX_ABS_INT", "StageConfigBase", "value_problems"]

#: no count, size or step number of a run comes near this (and it stays exact in a float)
MAX_ABS_INT = 2**53
#: no rate, timeout or weight comes near this; timeouts above it overflow the OS's timers
MAX_ABS_FLOAT = 1e9
_PATH_NAMES = ("path", "dir", "workdir", "file")


def _is_path_field(name: str) -> bool:
    return name in _PATH_NAMES or name.endswith(tuple(f"_{n}" for n in _PATH_NAMES))


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check(ann: Any, value: Any, where: str, name: str) -> list[str]:
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _check(typing.get_args(ann)[0], value, where, name)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return []
        options = [a for a in typing.get_args(ann) if a is not type(None)]
        return _check(options[0], value, where, name) if len(options) == 1 else []
    if ann is int or ann is float:
        kind = "an integer" if ann is int else "a number"
        if isinstance(value, bool | str) or (ann is int and isinstance(value, float)):
            shown = "a boolean" if isinstance(value, bool) else (
                f"the string {value!r}" if isinstance(value, str) else f"the float {value!r}")
            hint = " (YAML reads 1e26 as a string; write 1.0e+26)" if isinstance(value, str) and _numeric(value) else ""
            return [f"{where}: `{name}` must be {kind}, got {shown}{hint}"]
        if isinstance(value, float) and not math.isfinite(value):
            return [f"{where}: `{name}` must be a finite number, got {value}"]
        if isinstance(value, int) and abs(value) > MAX_ABS_INT:
            return [f"{where}: `{name}` = {value} is absurdly large (limit {MAX_ABS_INT})"]
        if isinstance(value, float) and abs(value) > MAX_ABS_FLOAT:
            return [f"{where}: `{name}` = {value:g} is absurdly large (limit {MAX_ABS_FLOAT:g})"]
        return []
    if ann is str:
        if isinstance(value, str) and not value.strip() and _is_path_field(name):
            return [f"{where}: `{name}` is an empty path; give a directory or file, or leave the key out"]
        return []
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return value_problems(ann, value, where)
    if origin in (list, tuple, set, frozenset) and isinstance(value, list | tuple):
        args = typing.get_args(ann)
        item = args[0] if args else Any
        return [p for i, v in enumerate(value) for p in _check(item, v, f"{where}[{i}]", name)]
    if origin is dict and isinstance(value, dict):
        args = typing.get_args(ann)
        item = args[1] if len(args) == 2 else Any
        return [p for k, v in value.items() for p in _check(item, v, f"{where}.{k}", str(k))]
    return []


def value_problems(model: type[BaseModel], doc: Any, path: str = "") -> list[str]:
    """Every strictness problem of ``doc`` as input of ``model`` (recursively), one line each."""
    if not isinstance(doc, dict):
        return []
    problems: list[str] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key in doc:
            problems += _check(field.annotation, doc[key], f"{path}.{key}" if path else key, name)
    return problems


class StageConfigBase(BaseModel):
    """Base of every stage kind's config: unknown keys are errors, not silently ignored; values strict."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _strict_values(cls, data: Any) -> Any:
        problems = value_problems(cls, data)
        if problems:
            raise ValueError("; ".join(p.split(": ", 1)[1] for p in problems))
        return data
