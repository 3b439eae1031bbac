"""``t2s torchrun [torchrun options] -- COMMAND``: torchrun that keeps exit code 2.

torchrun reports any failed worker as exit code 1, so a bad input found inside a worker would be
retried by the Job's backoffLimit instead of failing it at once (podFailurePolicy on exit code 2).
Workers started through this wrapper write their exit code to ``T2S_EXIT_CODE_FILE`` when they
fail with a bad input (see ``cli.main``); the wrapper exits with it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import EXIT_BAD_INPUT, EXIT_OK, BadInput

EXIT_CODE_ENV = "T2S_EXIT_CODE_FILE"


_HELP = """\
usage: t2s torchrun [torchrun options] -- COMMAND [ARGS]

Runs `torchrun [options] -m text2sql_core.cli COMMAND [ARGS]`. Unlike plain torchrun, a bad input in
any worker makes the launcher exit 2, so Kubernetes fails the Job at once instead of retrying it.
Every option before `--` is torchrun's (see `python -m torch.distributed.run --help`); after it comes a
t2s command.

example:
  t2s torchrun --nproc-per-node 4 -- stage run sft --config run.yaml
"""


def _run(args: argparse.Namespace) -> int:
    rest = list(args.rest)
    if not rest or rest[0] in ("-h", "--help"):
        print(_HELP, end="")
        return EXIT_OK
    if "--" not in rest:
        raise BadInput("usage: t2s torchrun [torchrun options] -- COMMAND ARGS (a t2s command, e.g. stage run sft)")
    cut = rest.index("--")
    launcher, command = rest[:cut], rest[cut + 1:]
    if not command:
        raise BadInput("no t2s command after `--` (for example: -- stage run sft --config run.yaml)")
    with tempfile.TemporaryDirectory(prefix="t2s-torchrun-") as tmp:
        marker = Path(tmp) / "exit-code"
        env = {**os.environ, EXIT_CODE_ENV: str(marker)}
        cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "text2sql_core.cli", *command]
        rc = subprocess.run(cmd, env=env, check=False).returncode
        if rc != 0 and marker.is_file() and marker.read_text().strip() == str(EXIT_BAD_INPUT):
            return EXIT_BAD_INPUT
        return rc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "torchrun", help="start a t2s command under torchrun (one process per GPU), keeping exit code 2",
        description="Runs `torchrun [options] -m text2sql_core.cli COMMAND`. Unlike plain torchrun, a bad input in "
                    "any worker makes the launcher exit 2, so Kubernetes fails the Job at once instead of retrying.",
        usage="t2s torchrun [torchrun options] -- COMMAND [ARGS]",
        # every argument belongs to torchrun or to the command: none is an option of this parser
        prefix_chars="+", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="torchrun options, then `--`, then the t2s command")
    p.set_defaults(func=_run)
