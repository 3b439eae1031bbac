"""Start-up time of ``t2s`` commands, this tree against an earlier commit, in one run.

Every ``t2s`` command pays for the imports it makes before doing anything. Goals: ``t2s --help``
<= 0.25 s and a no-op ``t2s stage run`` (the step is already published, so it only reads a manifest)
<= 1.5 s. The baseline is the same commands on the package as it was at ``--baseline`` (extracted with
``git archive``), so both trees run on the same machine, interleaved, in the same minute.

    python benchmarks/startup.py [--baseline 2dcbfe0] [--rounds 7] [--out benchmarks/results/startup.json]

Each figure is the median wall time of ``--rounds`` runs of a fresh interpreter (``python -c pass``
is shown as the floor every command pays).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
GOALS_S = {"t2s --help": 0.25, "t2s stage run (no-op)": 1.5}


def _extract(rev: str, dest: Path) -> Path:
    """The ``text2sql_core`` package as it was at ``rev``, unpacked under ``dest``."""
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", rev, "text2sql_core"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _time(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="2dcbfe0", help="commit to compare with (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=7, help="runs per command and tree (median shown)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    t2s = [sys.executable, "-m", "text2sql_core.cli"]
    with tempfile.TemporaryDirectory(prefix="t2s-startup-") as tmp:
        tmp_path = Path(tmp)
        trees = {"this tree": REPO_ROOT, f"baseline {args.baseline}": _extract(args.baseline, tmp_path / "base")}
        run_dir = tmp_path / "run"  # every command runs here: `python -m` puts the cwd first on sys.path
        run_dir.mkdir()
        envs = {}
        for name, root in trees.items():
            envs[name] = {**os.environ, "PYTHONPATH": str(root), "T2S_LOG_FORMAT": "json"}
            where = subprocess.run([sys.executable, "-c", "import text2sql_core; print(text2sql_core.__file__)"],
                                   env=envs[name], cwd=run_dir, capture_output=True, text=True,
                                   check=True).stdout.strip()
            if not where.startswith(str(root)):
                raise SystemExit(f"{name}: imported {where}, not the tree under {root}")
        env = envs["this tree"]
        # a run whose prepare step is published: `stage run prepare` then only reads its manifest
        subprocess.run([*t2s, "demo-data", "--out", "data", "--size", "small"], env=env, cwd=run_dir, check=True,
                       capture_output=True)
        subprocess.run([*t2s, "stage", "run", "prepare"], env=env, cwd=run_dir, check=True, capture_output=True)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "t2s --help": [*t2s, "--help"],
            "t2s stage run (no-op)": [*t2s, "stage", "run", "prepare"],
            "t2s config validate": [*t2s, "config", "validate", str(REPO_ROOT / "examples" / "demo.yaml")],
        }
        times: dict[str, dict[str, list[float]]] = {c: {t: [] for t in trees} for c in commands}
        for name, cmd in commands.items():  # warm the file cache once per tree
            for tree in trees:
                _time(cmd, envs[tree], run_dir)
        for _ in range(args.rounds):
            for name, cmd in commands.items():
                for tree in trees:
                    times[name][tree].append(_time(cmd, envs[tree], run_dir))

    medians = {c: {t: round(statistics.median(v), 3) for t, v in per.items()} for c, per in times.items()}
    tree_names = list(trees)
    print(f"median of {args.rounds} runs on {os.cpu_count()} CPU cores (Python {platform.python_version()})")
    print(f"{'command':26s} " + " ".join(f"{t:>22s}" for t in tree_names) + "   goal")
    for c, per in medians.items():
        goal = GOALS_S.get(c)
        mark = "" if goal is None else f"<= {goal} s {'met' if per['this tree'] <= goal else 'NOT met'}"
        print(f"{c:26s} " + " ".join(f"{per[t]:>20.3f} s" for t in tree_names) + f"   {mark}")
    if args.out:
        doc = {"rounds": args.rounds, "cpu_count": os.cpu_count(), "python": platform.python_version(),
               "baseline": args.baseline, "goals_s": GOALS_S, "median_s": medians,
               "load_average": list(os.getloadavg())}
        args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
