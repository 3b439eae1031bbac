"""The ``t2s`` command line. One module per command in this package.

Each command module defines ``register(subparsers)``; its handler returns an exit code. ``main`` is
the one place where errors become exit codes: 0 done, 2 bad input (a retry cannot help), 1 the rest.

Start-up stays fast because the parser imports only the module of the command being run: the other
commands appear in ``t2s --help`` from the ``COMMANDS`` table below (name and one-line help), which
a test keeps equal to what each module registers.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import EXIT_BAD_INPUT, EXIT_FAILURE, T2SError

__all__ = ["COMMANDS", "build_parser", "entrypoint", "main"]

#: command name -> (module in this package, the help line `t2s --help` shows for it)
COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("config", "validate a run config, print its JSON Schema or its defaults"),
    "controller": ("controller", "chain a run's stage Jobs on Kubernetes (create each when its inputs are published)"),
    "demo-data": ("demo_data", "write the demo Text-to-SQL dataset (Spider format, 4 SQLite databases)"),
    "export": ("export", "export a trained step's policy: merged HF model, LoRA adapter, model card"),
    "eval": ("eval", "Spider / BIRD / WikiSQL EX and EM of predicted SQL (official semantics)"),
    "pipeline": ("pipeline", "run the whole pipeline locally and write the run report"),
    "prepare": ("prepare", "turn a Spider/BIRD/CoSQL/SParC/CHASE/WikiSQL dataset into DB-GPT-Hub records"),
    "sql": ("sql", "run one read-only SQL query on a SQLite file in the evaluation sandbox"),
    "stage": ("stage", "run one step of a run (the container entrypoint)"),
    "store": ("store", "maintain the artifact store (garbage collection)"),
    "status": ("status", "show a run's steps: state, duration and key metrics"),
    "torchrun": ("torchrun", "start a t2s command under torchrun (one process per GPU), keeping exit code 2"),
}


def _command_in(argv: Sequence[str]) -> str | None:
    """The command named by ``argv`` (its first word that is not an option), if it is one of ours."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``t2s`` parser; with ``argv``, only the command it names is imported and fully registered."""
    parser = argparse.ArgumentParser(
        prog="t2s",
        description="text2sql-rlhf: prepare Text-to-SQL data, run SFT / reward model / RL stages, evaluate "
                    "(Spider EX and EM), and chain the stages locally or on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"text2sql-rlhf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = _command_in(argv) if argv is not None else None
    for name, (module_name, help_line) in COMMANDS.items():
        if argv is None or name == wanted:
            importlib.import_module(f"{__name__}.{module_name}").register(sub)
        else:  # listed in --help; never parsed, since argv names another command
            sub.add_parser(name, help=help_line, add_help=False)
    # a command module not in the table yet still works (imported eagerly); test_cli_startup flags it
    listed = {m for m, _ in COMMANDS.values()}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_") and info.name not in listed:
            register = getattr(importlib.import_module(f"{__name__}.{info.name}"), "register", None)
            if register is not None:
                register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(args.func(args) or 0)
    except T2SError as exc:
        # one line, on stderr: the structured context (file, record, field) is already in the message
        print(f"t2s: error: {exc}", file=sys.stderr)
        _record_exit_code(exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        print("t2s: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the catch-all that turns crashes into exit 1 for the Job's backoff
        from ..logging import get_logger

        get_logger().exception("unexpected error", error=type(exc).__name__)
        print(f"t2s: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _record_exit_code(code: int) -> None:
    """Under ``t2s torchrun``, tell the launcher why this worker failed (torchrun itself reports 1)."""
    import os

    path = os.environ.get("T2S_EXIT_CODE_FILE")
    if path and code == EXIT_BAD_INPUT:
        try:
            with open(path, "w") as fh:
                fh.write(str(code))
        except OSError:  # the launcher's temp dir is gone: nothing left to tell
            pass


def entrypoint() -> None:
    code = main()
    from .. import distributed

    distributed.finish(code)  # a torchrun rank ends here, without the interpreter's teardown
    raise SystemExit(code)
