"""Strict run configs: every numeric field refuses .inf, booleans, absurd sizes and (where bounded) -1."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from text2sql_core.cli import main
from text2sql_core.config import RunConfig, load_run_config
from text2sql_core.errors import T2SError

#: numeric fields without a lower bound on purpose: seeds and signed reward values
NEGATIVE_OK = {"seed", "model.tiny.seed", "stages.ppo.reward.match", "stages.ppo.reward.mismatch",
               "stages.ppo.reward.error"}


def _numeric_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        options = [a for a in typing.get_args(ann) if a is not type(None)] or [ann]
        sub = next((a for a in options if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is not None:
            out += _numeric_fields(sub, f"{prefix}{name}.")
        elif any(a in (int, float) for a in options):
            out.append(prefix + name)
    return out


FIELDS = _numeric_fields(RunConfig)


def _yaml_for(path: str, literal: str) -> str:
    parts = path.split(".")
    lines = []
    if parts[:2] == ["store", "s3"]:
        lines += ["store:", "  kind: s3", "  s3:", "    endpoint: s3.example.com", "    bucket: my-bucket"]
        lines.append(f"    {parts[2]}: {literal}")
        return "\n".join(lines) + "\n"
    for depth, part in enumerate(parts[:-1]):
        lines.append("  " * depth + f"{part}:")
    lines.append("  " * (len(parts) - 1) + f"{parts[-1]}: {literal}")
    return "\n".join(lines) + "\n"


def _write(tmp_path: Path, text: str | bytes) -> Path:
    f = tmp_path / "run.yaml"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    return f


def _validate(tmp_path: Path, text: str | bytes) -> int:
    """The exit code of ``t2s config validate`` (the walk calls its loader: 500 CLI starts are slow)."""
    try:
        load_run_config(_write(tmp_path, text))
    except T2SError as exc:
        return exc.exit_code
    return 0


def test_the_walk_covers_the_schema() -> None:
    assert len(FIELDS) > 50 and "stages.sft.max_steps" in FIELDS and "store.s3.read_timeout_s" in FIELDS


@pytest.mark.parametrize("literal", [".inf", "-.inf", ".nan", "true", "1.0e+26", "1e26", "100000000000000000000"])
def test_every_numeric_field_refuses_absurd_values(tmp_path: Path, literal: str) -> None:
    accepted = [f for f in FIELDS if _validate(tmp_path, _yaml_for(f, literal)) != 2]
    assert accepted == [], f"{literal} accepted for {accepted}"
    assert main(["config", "validate", str(_write(tmp_path, _yaml_for(FIELDS[-1], literal)))]) == 2


def test_minus_one_is_refused_wherever_a_bound_exists(tmp_path: Path) -> None:
    accepted = {f for f in FIELDS if _validate(tmp_path, _yaml_for(f, "-1")) != 2}
    assert accepted == NEGATIVE_OK


def test_defaults_validate(tmp_path: Path) -> None:
    assert all(_validate(tmp_path, _yaml_for(f, "1")) in (0, 2) for f in FIELDS[:3])
    assert _validate(tmp_path, "run_id: ok\n") == 0


@pytest.mark.parametrize(("text", "message"), [
    ("stages:\n  sft:\n    max_steps: 10\n    max_steps: 1000\n", "duplicate key 'max_steps' (first on line 3)"),
    ("workdir: ''\n", "`workdir` is an empty path"),
    ("store:\n  local:\n    path: ' '\n", "`path` is an empty path"),
    ("stages:\n  predict:\n    sql_timeout_s: .inf\n", "stages.predict.sql_timeout_s: `sql_timeout_s` must be a finite"),
    ("stages:\n  sft:\n    max_steps: true\n", "`max_steps` must be an integer, got a boolean"),
    ("stages:\n  sft:\n    learning_rate: 1e26\n", "`learning_rate` = 1e+26 is absurdly large"),
    ("stages:\n  sft:\n    learning_rate: '1e-05'\n", "got the string '1e-05' (YAML reads 1e26 as a string"),
    ("run_id: caf\xe9\n".encode("latin-1"), "not UTF-8 text: byte 0xe9 at offset 11 (line 1)"),
])
def test_lax_input_is_bad_input_on_one_line(tmp_path: Path, text, message: str, capsys) -> None:
    assert main(["config", "validate", str(_write(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_stage_configs_are_strict_without_the_loader() -> None:
    from pydantic import ValidationError

    from text2sql_core.stages.sft import SFTConfig

    with pytest.raises(ValidationError, match="must be an integer, got a boolean"):
        SFTConfig(max_steps=True)
    with pytest.raises(ValidationError, match="finite"):
        SFTConfig(learning_rate=float("inf"))


def test_exponent_floats_as_helm_writes_them_are_numbers(tmp_path: Path) -> None:
    """Helm's toYaml renders 0.00001 as 1e-05, which YAML 1.1 would read as a string."""
    cfg = load_run_config(_write(tmp_path, "stages:\n  sft:\n    learning_rate: 1e-05\n    max_grad_norm: 2E0\n"))
    assert cfg.stages.sft.learning_rate == 1e-05 and cfg.stages.sft.max_grad_norm == 2.0
