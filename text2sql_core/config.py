"""The run config: one YAML file describes a whole run.

Sections: ``run_id``, ``store`` (where artifacts go), ``data`` (the dataset), ``model`` (the base
model and LoRA), and ``stages.<kind>`` (each stage kind's settings). Every knob is declared once,
in the model of the section it belongs to, with a default and a description; ``t2s config schema``
prints the JSON Schema the Helm chart reuses. Secrets never live here: S3 keys come from the
environment or mounted files named in ``store.s3``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from .data.config import DataConfig
from .errors import BadInput
from .graph import DEFAULT_ALGORITHM
from .models.config import ModelConfig
from .registry import KINDS, RL_KINDS, config_class
from .store.config import StoreConfig

__all__ = ["RunConfig", "StagesConfig", "format_validation_error", "load_run_config", "run_config_schema"]

#: run ids become part of Job names (<= 63 chars with release and step), so they stay short DNS labels
RUN_ID_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,28}[a-z0-9])?$"
_SECRET_KEY = re.compile(r"^(aws_)?(secret(_access)?_key|access_key(_id)?|secret|password|session_token)$",
                         re.IGNORECASE)
_SECRET_ALLOWED = {"access_key_env", "secret_key_env"}
#: evaluate settings of Spider's evaluator that WikiSQL's scoring has no use for
_SPIDER_ONLY_EVALUATE = ("metric", "etype", "plug_value", "keep_distinct")


class _StagesBase(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: one section per registered stage kind; a kind that runs twice (predict, evaluate) shares its settings
StagesConfig = create_model(
    "StagesConfig",
    __base__=_StagesBase,
    __doc__="Settings of each stage kind, one section per kind of the stage registry.",
    **{k.name: (config_class(k), Field(default_factory=config_class(k), description=k.section or k.description))
       for k in KINDS},
)


class RLConfig(BaseModel):
    """Which RL algorithm the run's ``rl`` step trains with; its settings live in ``stages.<algorithm>``."""

    model_config = ConfigDict(extra="forbid")

    algorithm: str = Field(DEFAULT_ALGORITHM, description="RL algorithm of the `rl` step: "
                                                          + " | ".join(RL_KINDS) + ". It picks the run graph "
                                                          "(e.g. ppo reads a reward model; grpo needs none).")

    @field_validator("algorithm")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in RL_KINDS:
            raise ValueError(f"unknown RL algorithm {value!r}; use one of: {', '.join(RL_KINDS)}")
        return value


class RunConfig(BaseModel):
    """One run of the pipeline: its id, artifact store, dataset, model and stage settings."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field("demo", pattern=RUN_ID_PATTERN,
                        description="Run id: a lowercase DNS label of at most 30 characters. A new run id is a "
                                    "new run (GitOps retraining); artifacts live under runs/<run_id>/.")
    seed: int = Field(42, description="Seed of every random number generator of every stage.")
    workdir: str = Field(".t2s/work", description="Local scratch directory for inputs, outputs and checkpoints "
                                                  "being written (relative paths: to the current directory).")
    store: StoreConfig = Field(default_factory=StoreConfig, description="Artifact store (local directory or S3).")
    data: DataConfig = Field(default_factory=DataConfig, description="Dataset and databases.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Base model, precision and LoRA.")
    rl: RLConfig = Field(default_factory=RLConfig, description="The RL algorithm (the graph after sft).")
    stages: StagesConfig = Field(default_factory=StagesConfig, description="Settings of each stage kind.")

    def stage_config(self, kind: str) -> BaseModel:
        return getattr(self.stages, kind)

    @model_validator(mode="after")
    def _wikisql_is_scored_as_wikisql(self) -> RunConfig:
        """A WikiSQL run's evaluate steps score WikiSQL's way: the Spider-only settings would be ignored."""
        if self.data.format == "wikisql":
            evaluate = self.stages.evaluate
            for name in _SPIDER_ONLY_EVALUATE:
                if getattr(evaluate, name) != type(evaluate).model_fields[name].default:
                    raise ValueError(f"`stages.evaluate.{name}` does not apply to `data.format: wikisql` (scored "
                                     "by execution and logical form, WikiSQL's way); remove it")
            if self.stages.predict.execution_guided:
                raise ValueError("`stages.predict.execution_guided` runs candidates on one SQLite file per "
                                 "database, which `data.format: wikisql` does not have; set it to 0")
        return self


def _find_secrets(node: Any, path: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _SECRET_KEY.search(key) and key not in _SECRET_ALLOWED:
                found.append(here)
            found.extend(_find_secrets(value, here))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(_find_secrets(value, f"{path}[{i}]"))
    return found


def format_validation_error(exc: ValidationError) -> list[str]:
    """One line per error: ``field.path: message`` (every error, not only the first)."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"{where}: {err['msg']}")
    return lines


def _check_algorithm_named(doc: dict[str, Any], source: str) -> None:
    """Settings for an RL algorithm other than the one that runs are a config written for another graph.

    Configs written before ``rl.algorithm`` existed name ``stages.ppo``; with another default they
    would silently train with another algorithm, so say what to write instead.
    """
    stages = doc.get("stages")
    rl = doc.get("rl")
    chosen = rl.get("algorithm", DEFAULT_ALGORITHM) if isinstance(rl, dict) else DEFAULT_ALGORITHM
    if not isinstance(stages, dict) or not isinstance(chosen, str):
        return
    others = [k for k in RL_KINDS if k in stages and k != chosen and _differs_from_defaults(k, stages[k])]
    if others:
        named = "`rl.algorithm`" if isinstance(rl, dict) and "algorithm" in rl else "the default `rl.algorithm`"
        raise BadInput(f"`stages.{others[0]}` is set but {named} is {chosen!r}: add `rl: {{algorithm: {others[0]}}}` "
                       f"to train with {others[0]}, or remove `stages.{others[0]}`", uri=source,
                       field=f"stages.{others[0]}")


def _differs_from_defaults(kind: str, section: Any) -> bool:
    """A section equal to the defaults (as a dumped RunConfig writes every section) chooses nothing."""
    if not isinstance(section, dict):
        return True
    cls = config_class(kind)
    try:
        return cls.model_validate(section).model_dump() != cls().model_dump()
    except ValidationError:
        return True  # reported with its field by the validation that follows


def parse_run_config(doc: Any, *, source: str = "<config>") -> RunConfig:
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise BadInput("a run config must be a YAML mapping", uri=source)
    secrets = _find_secrets(doc)
    if secrets:
        raise BadInput("secrets are never read from the run config; remove "
                       + ", ".join(f"`{s}`" for s in secrets)
                       + " and provide S3 keys through the environment or `store.s3.credentials_dir`", uri=source)
    _check_algorithm_named(doc, source)
    try:
        return RunConfig.model_validate(doc)
    except ValidationError as exc:
        lines = format_validation_error(exc)
        raise BadInput(f"{len(lines)} error(s):\n  " + "\n  ".join(lines), uri=source) from None


def load_run_config(path: str | Path | None) -> RunConfig:
    """Load and validate a run config; ``None`` gives the defaults. Errors name the file and fields."""
    if path is None:
        return RunConfig()
    from .config_base import value_problems
    from .yamlio import load_yaml_file

    p = Path(path)
    if not p.is_file():
        raise BadInput("run config file not found", uri=str(p))
    doc = load_yaml_file(p)  # UTF-8 only, duplicate keys refused
    problems = value_problems(RunConfig, doc)  # no bool for int, finite and sane numbers, no empty paths
    if not problems:
        return parse_run_config(doc, source=str(p))
    try:  # report the schema's own errors too, once per field
        parse_run_config(doc, source=str(p))
    except BadInput as exc:
        lines = exc.message.splitlines()
        if len(lines) == 1:
            raise
        flagged = {line.split(": ", 1)[0] for line in problems}
        problems += [line.strip() for line in lines[1:] if line.strip().split(": ", 1)[0] not in flagged]
    raise BadInput(f"{len(problems)} error(s):\n  " + "\n  ".join(problems), uri=str(p))


def run_config_schema() -> dict[str, Any]:
    schema = RunConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "text2sql-rlhf run config"
    return schema


def dump_schema() -> str:
    return json.dumps(run_config_schema(), indent=2, sort_keys=True) + "\n"
