"""``t2s stage run STEP --config FILE``: the container entrypoint of every stage Job."""

from __future__ import annotations

import argparse

from ..errors import EXIT_OK
from ..graph import all_step_names


def _run(args: argparse.Namespace) -> int:
    from ..config import load_run_config
    from ..stages.base import run_step

    cfg = load_run_config(args.config)
    if args.run_id:
        cfg = cfg.model_copy(update={"run_id": args.run_id})
    outcome = run_step(cfg, args.step, force=args.force)
    state = "skipped (already published)" if outcome.skipped else f"published in {outcome.seconds:.1f}s"
    print(f"{args.step}: {state}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    from ..config import load_run_config
    from ..graph import steps_for
    from ..registry import KINDS, RL_KINDS

    cfg = load_run_config(args.config)
    print(f"steps of this run (rl.algorithm: {cfg.rl.algorithm}):")
    for s in steps_for(cfg):
        print(f"  {s.name:14s} kind={s.kind:9s} inputs={','.join(s.inputs) or '-'}")
    print("stage kinds:")
    for k in KINDS:
        tag = " (rl.algorithm)" if k.name in RL_KINDS else ""
        print(f"  {k.name:9s} {k.description}{tag}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stage", help="run one step of a run (the container entrypoint)",
                       description="Run or list the steps of the pipeline.")
    cmds = p.add_subparsers(dest="stage_command", metavar="ACTION")
    r = cmds.add_parser(
        "run", help="run one step: read upstream artifacts, publish outputs with a manifest",
        description="Run one step. Skips (exit 0) when the step's manifest exists with the same config hash. "
                    "Exit codes: 0 done or skipped, 2 bad input or config (a retry cannot help), 1 other errors.")
    r.add_argument("step", metavar="STEP", help=f"a step of the run's graph: {', '.join(all_step_names())} "
                                                "(which exist depends on `rl.algorithm`; `t2s stage list` shows them)")
    r.add_argument("--config", help="run config YAML (default: built-in defaults)")
    r.add_argument("--run-id", help="override the run config's run_id")
    r.add_argument("--force", action="store_true", help="rerun even when already published; drops checkpoints")
    r.set_defaults(func=_run)
    ls = cmds.add_parser("list", help="list the run's steps (kinds, inputs) and every stage kind",
                         description="The run graph a config describes (it depends on `rl.algorithm`) and the "
                                     "stage kinds of the registry.")
    ls.add_argument("--config", help="run config YAML (default: built-in defaults)")
    ls.set_defaults(func=_list)
