"""The ``t2s`` command line. One module per command in this package, discovered at start-up.

Each command module defines ``register(subparsers)``; its handler returns an exit code. ``main`` is
the one place where errors become exit codes: 0 done, 2 bad input (a retry cannot help), 1 the rest.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import EXIT_BAD_INPUT, EXIT_FAILURE, T2SError

__all__ = ["build_parser", "entrypoint", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t2s",
        description="text2sql-rlhf: prepare Text-to-SQL data, run SFT / reward model / PPO stages, evaluate "
                    "(Spider EX and EM), and chain the stages locally or on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"text2sql-rlhf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(args.func(args) or 0)
    except T2SError as exc:
        from ..logging import get_logger

        get_logger().error(str(exc), error=type(exc).__name__, **exc.context())
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
    raise SystemExit(main())
