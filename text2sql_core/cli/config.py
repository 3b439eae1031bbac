"""``t2s config validate FILE`` and ``t2s config schema``."""

from __future__ import annotations

import argparse
import sys

from ..errors import EXIT_OK


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


def _defaults(args: argparse.Namespace) -> int:
    import yaml

    from ..config import RunConfig

    sys.stdout.write(yaml.safe_dump(RunConfig().model_dump(mode="json"), sort_keys=False))
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
    d = cmds.add_parser("defaults", help="print a run config with every default filled in")
    d.set_defaults(func=_defaults)
