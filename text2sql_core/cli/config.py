"""``t2s config validate FILE`` and ``t2s config schema``."""

from __future__ import annotations

import argparse
import sys
import textwrap
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..errors import EXIT_OK

if TYPE_CHECKING:
    from pydantic import BaseModel


def _validate(args: argparse.Namespace) -> int:
    from ..config import load_run_config

    cfg = load_run_config(args.file)
    print(f"{args.file}: valid run config (run_id={cfg.run_id}, store={cfg.store.kind}, "
          f"data={cfg.data.format}, model={cfg.model.path})")
    return EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    from ..config import dump_schema

    sys.stdout.write(dump_schema())
    return EXIT_OK


def fresh_run_id(now: datetime | None = None) -> str:
    """A run id of its own for a new config (``run-YYYYMMDD-HHMMSS``, UTC), so it never reuses the demo's."""
    return (now or datetime.now(UTC)).strftime("run-%Y%m%d-%H%M%S")


def commented_yaml(model: BaseModel, indent: int = 0) -> str:
    """``model`` as YAML with each field's description above it as a comment (what ``config defaults`` prints)."""
    import yaml
    from pydantic import BaseModel

    pad = " " * indent
    lines: list[str] = []
    data = model.model_dump(mode="json")
    for name, info in type(model).model_fields.items():
        if info.description:
            for line in textwrap.wrap(info.description, width=max(40, 100 - indent)):
                lines.append(f"{pad}# {line}")
        value = getattr(model, name)
        if isinstance(value, BaseModel) and not type(value).model_fields:
            lines.append(f"{pad}{name}: {{}}")  # a section with no knobs yet
        elif isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:")
            lines.append(commented_yaml(value, indent + 2).rstrip("\n"))
        else:
            dumped = yaml.safe_dump({name: data[name]}, default_flow_style=True, width=10_000).strip()
            lines.append(pad + dumped[1:-1].strip() if dumped.startswith("{") else pad + dumped)
    return "\n".join(lines) + "\n"


def _defaults(args: argparse.Namespace) -> int:
    from ..config import RunConfig

    sys.stdout.write("# A run config with every default; `t2s config validate FILE` checks an edited copy.\n"
                     + commented_yaml(RunConfig(run_id=fresh_run_id())))
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="validate a run config, print its JSON Schema or its defaults",
                       description="Work with run config files (one YAML file describes a run).")
    cmds = p.add_subparsers(dest="config_command", metavar="ACTION")
    v = cmds.add_parser("validate", help="check a run config; prints every error with its field path (exit 2)")
    v.add_argument("file", help="run config YAML")
    v.set_defaults(func=_validate)
    s = cmds.add_parser("schema", help="print the run config's JSON Schema (the Helm chart reuses it)")
    s.set_defaults(func=_schema)
    d = cmds.add_parser("defaults", help="print a run config with every default filled in, each knob's "
                                           "description as a comment, and a fresh run id")
    d.set_defaults(func=_defaults)
