"""``t2s pipeline run``: the whole recipe locally, each step a subprocess, then the run report."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import EXIT_OK, BadInput
from ..graph import all_step_names

_NO_CONFIG_HINT = ("no --config and no data/ folder here: nothing to run. Try the demo (`make demo`, or "
                   "`t2s demo-data --out demo/data` then `t2s pipeline run --config examples/demo.yaml`), or "
                   "write a run config with `t2s config defaults > run.yaml`, edit its `data` section and pass "
                   "--config run.yaml")


def _run(args: argparse.Namespace) -> int:
    from ..config import load_run_config
    from ..graph import steps_for
    from ..pipeline import run_pipeline, select_steps

    if not args.config and not Path("data").is_dir():  # checked before anything is written
        raise BadInput(_NO_CONFIG_HINT, field="--config")

    cfg = load_run_config(args.config)
    if args.run_id:
        cfg = cfg.model_copy(update={"run_id": args.run_id})
    steps = select_steps(args.steps.split(",") if args.steps else None, until=args.until, steps=steps_for(cfg))
    run_pipeline(args.config, cfg, steps=steps, force=args.force, report=not args.no_report)
    if any(s.kind == "export" for s in steps):
        print(f"export: {_export_location(cfg)} (merged model, model card; see its README.md to serve it)")
    return EXIT_OK


def _export_location(cfg) -> str:
    """Where the export step published: a local folder, or the store URI of its prefix."""
    from ..graph import steps_for

    name = next(s.name for s in steps_for(cfg) if s.kind == "export")
    if cfg.store.kind == "local":
        return str(Path(cfg.store.local.path).expanduser() / "runs" / cfg.run_id / name)
    from ..store import open_store

    return open_store(cfg.store).uri_for(f"runs/{cfg.run_id}/{name}")


def _report(args: argparse.Namespace) -> int:
    from ..config import load_run_config
    from ..report import write_run_report

    cfg = load_run_config(args.config)
    if args.run_id:
        cfg = cfg.model_copy(update={"run_id": args.run_id})
    print(f"report: {write_run_report(cfg)}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="run the whole pipeline locally and write the run report",
                       description="prepare -> sft -> predict_sft -> evaluate_sft -> [rm_data -> rm] -> rl -> "
                                   "predict_rl -> evaluate_rl (the RL algorithm, `rl.algorithm`, decides which "
                                   "of rm_data and rm run), each step as a subprocess through its entrypoint (as a Kubernetes "
                                   "Job would run it). Published steps are skipped; killed steps resume.")
    cmds = p.add_subparsers(dest="pipeline_command", metavar="ACTION")
    r = cmds.add_parser("run", help="run the steps of a run in order, then write the report")
    r.add_argument("--config", help="run config YAML (default: built-in defaults, data in ./data)")
    r.add_argument("--run-id", help="override the config's run_id")
    r.add_argument("--steps", help=f"comma-separated subset of: {', '.join(all_step_names())}")
    r.add_argument("--until", choices=all_step_names(), metavar="STEP", help="run every step up to and including STEP")
    r.add_argument("--force", action="store_true", help="rerun steps even when already published")
    r.add_argument("--no-report", action="store_true", help="do not write the run report")
    r.set_defaults(func=_run)
    rep = cmds.add_parser("report", help="(re)write the report of a run from its published artifacts")
    rep.add_argument("--config", help="run config YAML")
    rep.add_argument("--run-id", help="override the config's run_id")
    rep.set_defaults(func=_report)
