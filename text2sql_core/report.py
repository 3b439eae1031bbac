"""The run report: SFT vs RLHF accuracy per hardness, training curves, RM accuracy, time per step.

Built only from published artifacts (manifests and the files they list), so it can be rewritten at
any time, locally or from a cluster run's S3 store, and says "not run" for steps without a manifest.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .config import RunConfig
from .graph import STEPS, Step, steps_for
from .store import ArtifactStore, open_store
from .store.manifest import Manifest, fetch, publish, read_manifest

__all__ = ["collect_run", "render_report", "write_run_report"]

HARDNESS = ("easy", "medium", "hard", "extra", "all")
#: per step: the JSONL training logs the report plots (the first one a step published)
CURVE_FILES = {"sft": ("loss_log.jsonl",), "rm": ("rm_log.jsonl",),
               "rl": ("ppo_log.jsonl", "grpo_log.jsonl", "dpo_log.jsonl")}


def collect_run(store: ArtifactStore, run_id: str, steps: tuple[Step, ...] = STEPS) -> dict[str, Manifest | None]:
    return {s.name: read_manifest(store, f"runs/{run_id}/{s.name}") for s in steps}


def _algorithm(manifests: dict[str, Manifest | None]) -> str:
    rl = manifests.get("rl")
    return rl.kind.upper() if rl is not None else "RL"


def _read_log(store: ArtifactStore, run_id: str, step: str, manifest: Manifest, tmp: Path) -> list[dict[str, Any]]:
    names = {f.path for f in manifest.files}
    for candidate in CURVE_FILES.get(step, ()):
        if candidate in names:
            local = tmp / step
            one = manifest.model_copy(update={"files": [f for f in manifest.files if f.path == candidate]})
            fetch(store, f"runs/{run_id}/{step}", local, manifest=one)
            rows = []
            for line in (local / candidate).read_text().splitlines():
                if line.strip():
                    rows.append(json.loads(line))
            return rows
    return []


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("–" if v is None else str(v))


def render_report(run_id: str, manifests: dict[str, Manifest | None], curves: dict[str, list[dict[str, Any]]],
                  plot_name: str | None) -> str:
    sft = manifests.get("evaluate_sft")
    ppo = manifests.get("evaluate_rl")
    algo = _algorithm(manifests)
    lines = [f"# Run `{run_id}`", "", f"Written {datetime.now(UTC).isoformat(timespec='seconds')}.", ""]
    lines += ["## Execution accuracy (EX) and exact match (EM) per hardness", "",
              f"| hardness | SFT EX | {algo} EX | SFT EM | {algo} EM |", "| --- | --- | --- | --- | --- |"]
    for h in HARDNESS:
        key = "" if h == "all" else f"_{h}"
        row = [h]
        for metric in ("ex", "em"):
            for m in (sft, ppo):
                row.append(_fmt(m.metrics.get(f"{metric}{key}") if m else None))
        lines.append(f"| {row[0]} | {row[1]} | {row[2]} | {row[3]} | {row[4]} |")
    if sft and ppo and isinstance(sft.metrics.get("ex"), float) and isinstance(ppo.metrics.get("ex"), float):
        lines += ["", (f"RL ({algo}) changes EX by {100 * (ppo.metrics['ex'] - sft.metrics['ex']):+.1f} points and EM by "
                      f"{100 * (ppo.metrics.get('em', 0.0) - sft.metrics.get('em', 0.0)):+.1f} points.")]
    rm = manifests.get("rm")
    lines += ["", "## Reward model", ""]
    if rm:
        acc = rm.metrics.get("eval_accuracy", rm.metrics.get("accuracy"))
        lines.append(f"Pairwise accuracy on held-out pairs: {_fmt(acc)}.")
        by_origin = {k.removeprefix("eval_accuracy_"): v for k, v in rm.metrics.items()
                     if k.startswith("eval_accuracy_") and isinstance(v, int | float)}
        if by_origin:  # the policy's own mistakes vs verified perturbations of gold
            lines.append("By origin of the rejected answer: "
                         + ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(by_origin.items())) + ".")
    else:
        lines.append("Not run.")
    lines += ["", "## Steps", "", "| step | state | seconds | key metrics |", "| --- | --- | --- | --- |"]
    for name in manifests:
        m = manifests.get(name)
        if m is None:
            lines.append(f"| {name} | not published | – | |")
            continue
        secs = m.metrics.get("seconds", (m.finished_at - m.started_at).total_seconds())
        keys = {k: v for k, v in m.metrics.items() if k != "seconds" and isinstance(v, int | float)}
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in list(keys.items())[:6])
        lines.append(f"| {name} | published | {_fmt(float(secs))} | {shown} |")
    if plot_name:
        lines += ["", "## Curves", "", f"![training curves and accuracy]({plot_name})"]
    return "\n".join(lines) + "\n"


def _plot(path: Path, manifests: dict[str, Manifest | None], curves: dict[str, list[dict[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    algo = _algorithm(manifests)
    panels = [("sft", "loss", "SFT loss"), ("rm", "loss", "RM loss"), ("rl", "reward", f"{algo} reward"),
              ("rl", "kl", f"{algo} KL to reference")]
    fig, axes = plt.subplots(1, 5, figsize=(22, 4))
    for ax, (step, key, title) in zip(axes, panels, strict=False):
        rows = [r for r in curves.get(step, []) if key in r]
        if rows:
            xs = [r.get("step", i) for i, r in enumerate(rows)]
            ax.plot(xs, [r[key] for r in rows])
        else:
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("step")
    ax = axes[-1]
    width = 0.2
    xs = range(len(HARDNESS))
    for j, (step, metric, label) in enumerate((("evaluate_sft", "ex", "SFT EX"), ("evaluate_rl", "ex", f"{algo} EX"),
                                               ("evaluate_sft", "em", "SFT EM"), ("evaluate_rl", "em", f"{algo} EM"))):
        m = manifests.get(step)
        vals = [(m.metrics.get(metric + ("" if h == "all" else f"_{h}")) or 0.0) if m else 0.0 for h in HARDNESS]
        ax.bar([x + (j - 1.5) * width for x in xs], vals, width, label=label)
    ax.set_xticks(list(xs), HARDNESS)
    ax.set_ylim(0, 1.05)
    ax.set_title("EX / EM per hardness")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_run_report(run_config: RunConfig, *, base_dir: Path | None = None) -> Path:
    """Write ``report.md`` + ``report.png`` locally and publish them as ``runs/<run>/report``."""
    store = open_store(run_config.store, base_dir=base_dir)
    run_id = run_config.run_id
    manifests = collect_run(store, run_id, steps_for(run_config))
    root = Path(run_config.workdir)
    if not root.is_absolute():
        root = (base_dir or Path.cwd()) / root
    out = root / run_id / "report"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        curves = {s: _read_log(store, run_id, s, m, Path(tmp)) for s, m in manifests.items() if m is not None}
    _plot(out / "report.png", manifests, curves)
    (out / "report.md").write_text(render_report(run_id, manifests, curves, "report.png"))
    publish(store, f"runs/{run_id}/report", out, run_id=run_id, step="report", kind="report",
            config_hash="", metrics={}, started_at=datetime.now(UTC))
    return out / "report.md"
