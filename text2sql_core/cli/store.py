"""``t2s store gc --run-id ID [--delete]``: list, then remove, what no manifest of a run references."""

from __future__ import annotations

import argparse

from ..errors import EXIT_OK


def _gc(args: argparse.Namespace) -> int:
    from ..config import load_run_config
    from ..store import open_store
    from ..store.gc import collect_garbage

    cfg = load_run_config(args.config)
    run_id = args.run_id or cfg.run_id
    store = open_store(cfg.store)
    report = collect_garbage(store, run_id, delete=args.delete, lease_ttl_s=cfg.store.lease_ttl_s)
    verb = "removed" if args.delete else "would remove"
    for key, size in report.unreferenced:
        print(f"{verb}: {store.uri_for(key)} ({size} bytes, no manifest lists it)")
    for item in report.debris:
        print(f"{verb}: {store.uri_for(item)} (left by a killed write)")
    for step in report.skipped_live:
        print(f"skipped: step {step} is running (live lease)")
    n = len(report.unreferenced) + len(report.debris)
    tail = "" if args.delete or not n else "; rerun with --delete to remove them"
    print(f"run {run_id}: {n} item(s), {report.bytes} bytes {verb}{tail}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("store", help="maintain the artifact store (garbage collection)",
                       description="Work with the artifact store of a run config.")
    cmds = p.add_subparsers(dest="store_command", metavar="ACTION")
    gc = cmds.add_parser(
        "gc", help="list (dry run) or remove what no manifest of a run references",
        description="Objects under runs/<run>/ that no _manifest.json lists, expired leases, temp files and "
                    "incomplete multipart uploads left by killed writes. Dry run unless --delete. Steps with a "
                    "live lease are skipped.")
    gc.add_argument("--config", help="run config YAML (its store; default: built-in defaults)")
    gc.add_argument("--run-id", help="the run to sweep (default: the config's run_id)")
    gc.add_argument("--delete", action="store_true", help="remove what is listed (default: only list it)")
    gc.set_defaults(func=_gc)
