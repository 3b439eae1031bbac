"""What every RL stage adapter does around its trainer, written once (ppo, grpo, dpo).

An adapter builds its trainer and hands it here: greedy evaluation before training (or the saved
one on resume), the step loop with a progress bar, live progress and checkpoints every
``save_steps``, greedy evaluation after, and the published files: ``adapter/``, ``model_ref.json``
(the SFT lineage plus the adapter, so ``predict_rl`` loads it), ``<kind>_log.jsonl``, ``eval.json``,
``curves.png``. The trainer only has to offer :class:`RLTrainer`. :func:`open_rl_inputs` is the
opening they share: the prompts, the evaluation samples and the SFT policy with a fresh RL adapter.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .base import StageContext

__all__ = ["RLInputs", "RLTrainer", "open_rl_inputs", "plot_curves", "run_rl_training"]


class RLTrainer(Protocol):
    global_step: int
    history: list[dict[str, Any]]

    def step(self) -> dict[str, Any]: ...

    def save(self, directory: Path) -> Path: ...

    def load(self, directory: Path) -> None: ...

    def publish_actor(self, directory: Path) -> None: ...

    def optimizer_steps(self) -> int: ...


@dataclass
class RLInputs:
    """What an RL stage starts from: its prompts, the evaluation samples and the policy to train."""

    prepared: Path  # the prepare step's published files (database/, train/dev prompts)
    examples: list[Any]  # training prompts (PromptExample), in the prepared order
    eval_train: list[Any]  # a seeded sample of them whose greedy answers are evaluated
    eval_dev: list[Any]  # the first dev prompts (held-out EX)
    sft_ref: Any  # the SFT step's model reference (the published lineage the RL adapter extends)
    policy: Any  # the SFT policy with a new LoRA adapter (PeftModel, eval mode)
    tokenizer: Any
    loaded: Any = None  # what ``before_adapter`` returned (e.g. the reward model)


def open_rl_inputs(ctx: StageContext, cfg: Any, *, algorithm: str, train_prompts: int | None,
                   before_adapter: Callable[[Any, Any], Any] | None = None) -> RLInputs:
    """Read the prompts, load the merged SFT policy (a 4-bit one is refused) and add the RL adapter.

    ``train_prompts`` cuts the training prompts (ppo and grpo sample from the first N; dpo passes
    ``None``: its prompts only feed the EX evaluation). ``before_adapter(policy, tokenizer)`` runs on
    the SFT policy before the adapter goes in: the reward model is a copy of the policy without it.
    """
    import torch

    from ..errors import BadInput
    from ..models.loading import load_policy_from_step, read_model_ref
    from ..rl.reward_model import add_lora
    from ..rl.rollout import examples_from_rows
    from .rm_data import read_prompts

    seed = ctx.run_config.seed
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    prepared = ctx.input("prepare")
    rows = read_prompts(prepared, "train")
    examples = examples_from_rows(rows[:train_prompts])
    eval_train = random.Random(seed).sample(examples, min(cfg.eval_train_prompts, len(examples)))
    eval_dev = examples_from_rows(read_prompts(prepared, "dev")[:cfg.eval_dev_prompts]) if cfg.eval_dev_prompts else []

    torch.manual_seed(seed)
    sft_ref = read_model_ref(ctx.input("sft"))
    policy, tokenizer = load_policy_from_step(ctx, "sft")
    if hasattr(policy, "merge_and_unload"):  # a quantized base keeps its SFT adapter attached
        raise BadInput(f"{algorithm} needs the SFT adapters merged into the base (its reference is the policy with "
                       f"its adapter off); 4-bit (QLoRA) policies are not supported by the {ctx.step.kind} stage: "
                       "set model.quantization: none", field="model.quantization")
    loaded = before_adapter(policy, tokenizer) if before_adapter is not None else None
    policy = add_lora(policy, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=0.0,
                      target_modules=cfg.lora_target_modules, task="CAUSAL_LM").eval()
    return RLInputs(prepared, examples, eval_train, eval_dev, sft_ref, policy, tokenizer, loaded)


def plot_curves(history: list[dict[str, Any]], path: Path, keys: Sequence[str], *, title: str) -> None:
    """One small panel per logged quantity against the training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [k for k in keys if any(k in r for r in history)]
    cols = 3
    rows = max(1, (len(shown) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, shown, strict=False):
        points = [(r["step"], r[key]) for r in history if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], lw=1.2)
        ax.set_title(key)
        ax.set_xlabel(f"{title} step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle(f"{title} training curves")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)


def run_rl_training(ctx: StageContext, trainer: RLTrainer, *, max_steps: int, save_steps: int, logging_steps: int,
                    evaluate: Callable[[bool], dict[str, Any]], progress_keys: dict[str, str],
                    curves: Sequence[str], title: str, sft_ref: Any) -> dict[str, Any]:
    """Train to ``max_steps`` (resuming from the newest checkpoint), evaluate, publish; returns metrics.

    ``evaluate(after)`` runs the greedy evaluations (``after``: with the trained policy, e.g. its EMA);
    ``progress_keys`` maps ``ctx.progress`` names to keys of a step's record.
    """
    from tqdm import tqdm

    from ..models.loading import write_model_ref

    latest = ctx.checkpoints.latest()
    resumed_from = 0
    if latest is not None:
        resumed_from, ckpt = latest
        trainer.load(ckpt)
        baseline = json.loads((ckpt / "baseline.json").read_text())
        ctx.log.info(f"{ctx.step.kind} resumed", step=resumed_from, optimizer_steps=trainer.optimizer_steps())
    else:
        ctx.log.info(f"evaluating the SFT policy before {title}")
        baseline = evaluate(False)
    resume_record = {"event": "start", "resumed_from_step": resumed_from,
                     "optimizer_steps": trainer.optimizer_steps()}

    bar = tqdm(total=max_steps, initial=trainer.global_step, desc=ctx.step.kind, unit="step", file=sys.stderr,
               leave=False)
    while trainer.global_step < max_steps:
        record = trainer.step()
        bar.update(1)
        step = trainer.global_step
        if step % logging_steps == 0 or step == max_steps:
            ctx.progress(step=step, total=max_steps, **{name: record[key] for name, key in progress_keys.items()
                                                        if key in record})
        if step % save_steps == 0 and step < max_steps:
            directory = ctx.workdir / "checkpoint_out" / f"{step:08d}"
            trainer.save(directory)
            (directory / "baseline.json").write_text(json.dumps(baseline) + "\n")
            ctx.checkpoints.save(step, directory, metrics={name: record[key] for name, key in progress_keys.items()
                                                           if key in record})
    bar.close()
    final = evaluate(True)

    out = ctx.output_dir
    trainer.publish_actor(out / "adapter")
    write_model_ref(out, sft_ref.with_adapter(ctx.step.name, "adapter"))
    log_name = f"{ctx.step.kind}_log.jsonl"
    (out / log_name).write_text("".join(json.dumps(r) + "\n" for r in [resume_record, *trainer.history]))
    (out / "eval.json").write_text(json.dumps({"algorithm": ctx.step.kind, "before": baseline, "after": final},
                                              indent=2) + "\n")
    plot_curves(trainer.history, out / "curves.png", curves, title=title)

    metrics: dict[str, Any] = {"algorithm": ctx.step.kind, "steps": trainer.global_step,
                               "resumed_from_step": resumed_from, "optimizer_steps": trainer.optimizer_steps()}
    for split in ("train", "dev"):
        for when, source in (("before", baseline), ("after", final)):
            for key, value in source.get(split, {}).items():
                metrics[f"{split}_{key}_{when}"] = value
    return metrics
