"""How fast ``t2s eval`` scores the Spider sample, against a serial, uncached run of itself.

The baseline runs every query in this process, one after another, re-executes the gold query for
every prediction and re-reads the schema per example (what the official evaluator does); the
evaluator's default runs SQL in a pool of sandbox processes (one per core) while this process
parses and matches, each distinct query once. Both must give identical scores.

    python benchmarks/eval_speed.py [--repeat 3] [--rounds 3]

Then ``t2s eval`` itself, end to end in a fresh process (start-up, imports, reading the files, writing
the outputs), with and without the chart, beside the scoring time it reports (``summary.json``'s
``seconds``); goal: end to end <= 1.5x scoring with ``--no-chart``.

``--repeat 3`` evaluates the sample three times over (1011 predictions, about Spider dev's 1034).
Each copy's SQL gets a different trailing space count, so no copy is served from another's cache:
the work is that of 1011 distinct examples.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from text2sql_core.evaluation.api import evaluate
from text2sql_core.evaluation.inputs import load_gold, load_predictions

REPO_ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path,
                        default=Path(os.environ.get("T2S_SHARED_DIR", REPO_ROOT.parent / "shared")),
                        help="folder holding spider-sample/ (default: $T2S_SHARED_DIR or ../shared)")
    parser.add_argument("--system", default="dailsql_gpt4", help="predictions/<system>.sql to score")
    parser.add_argument("--repeat", type=int, default=3, help="evaluate the sample this many times over")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per mode (the median is shown)")
    args = parser.parse_args()

    sample = args.shared / "spider-sample"
    gold = load_gold(sample / "dev_gold.sql")
    preds = load_predictions(sample / "predictions" / f"{args.system}.sql", expected=len(gold))
    # copies differ by trailing spaces (same queries, other cache keys): no copy rides on another's cache
    gold = [replace(g, sql=g.sql + " " * k) for k in range(args.repeat) for g in gold]
    preds = [replace(p, sql=p.sql + " " * k) for k in range(args.repeat) for p in preds]
    common = {"db_dir": sample / "database", "tables": sample / "tables.json"}
    modes = {
        "serial, uncached": {"workers": 0, "cache": False},
        "default (pool, cached)": {},
    }
    print(f"{len(gold)} predictions ({args.system}, sample x{args.repeat}) on {os.cpu_count()} CPU cores; "
          f"median of {args.rounds} rounds, modes interleaved")
    times: dict[str, list[float]] = {name: [] for name in modes}
    scores = {}
    for _ in range(args.rounds):
        for name, kw in modes.items():
            started = time.perf_counter()
            result = evaluate(gold, preds, **common, **kw)
            times[name].append(time.perf_counter() - started)
            scores[name] = ([(e.ex, e.em) for e in result.examples], result.queries_executed)
    (base_rows, base_queries), (fast_rows, fast_queries) = scores.values()
    if base_rows != fast_rows:
        raise SystemExit("the two modes disagree on some example: the speed-up is not worth anything")
    base, fast = (statistics.median(times[name]) for name in modes)
    print(f"{'serial, uncached':24s} {base:6.2f} s   {base_queries:5d} queries executed")
    print(f"{'default (pool, cached)':24s} {fast:6.2f} s   {fast_queries:5d} queries executed")
    print(f"speed-up: {base / fast:.2f}x   ({len(gold) / fast:.0f} predictions/s)")
    end_to_end(sample, args.system, args.rounds)


def end_to_end(sample: Path, system: str, rounds: int) -> None:
    """``t2s eval`` as a user runs it, on the sample once over: wall time beside the scoring it reports."""
    cmd = [sys.executable, "-m", "text2sql_core.cli", "eval", "--gold", str(sample / "dev_gold.sql"),
           "--pred", str(sample / "predictions" / f"{system}.sql"), "--db", str(sample / "database"),
           "--tables", str(sample / "tables.json"), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    print(f"\nt2s eval end to end ({system}, the sample once), median of {rounds} rounds:")
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in (("--no-chart", ["--no-chart"]), ("with the chart", [])):
            walls, scoring = [], []
            for _ in range(rounds):
                out = Path(tmp) / "out"
                started = time.perf_counter()
                subprocess.run([*cmd, "--out", str(out), *extra], env=env, cwd=tmp, check=True, capture_output=True)
                walls.append(time.perf_counter() - started)
                scoring.append(json.loads((out / "summary.json").read_text())["seconds"])
            wall, score = statistics.median(walls), statistics.median(scoring)
            print(f"{label:24s} {wall:6.2f} s end to end, {score:6.2f} s scoring: {wall / score:.2f}x"
                  + ("   (goal <= 1.5x)" if extra else ""))


if __name__ == "__main__":
    main()
