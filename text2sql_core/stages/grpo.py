"""The ``grpo`` stage: GRPO of the SFT policy against the execution reward (no reward model, no critic).

A thin adapter around :class:`text2sql_core.rl.grpo.trainer.GRPOTrainer` (see there for the loop and
why it is ours rather than TRL's): read the prepared prompts and the SFT policy, add a new LoRA
adapter, train with a progress bar and checkpoints (a rerun resumes from the newest, kill -9 safe),
then publish.

Published: ``adapter/`` (the policy's LoRA adapter), ``model_ref.json`` (the SFT lineage plus this
adapter: ``predict`` loads it with ``load_policy_from_step``), ``grpo_log.jsonl`` (metrics per step),
``curves.png``, ``eval.json`` (greedy reward / EX before and after).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

from ..errors import BadInput
from ..rl.grpo.config import GRPOConfig
from .base import Stage, StageContext

__all__ = ["STAGE", "run"]

CURVES = ("reward", "exec_match", "frac_reward_zero_std", "clip_high", "kl", "entropy", "completion_length",
          "policy_loss", "reward_std")


def _plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """One small panel per logged quantity against the GRPO step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in CURVES if any(k in r for r in history)]
    cols = 3
    rows = max(1, (len(keys) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        points = [(r["step"], r[key]) for r in history if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], lw=1.2)
        ax.set_title(key)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)


def _examples(rows: list[dict[str, Any]]):
    from ..rl.ppo_trainer import PromptExample

    return [PromptExample(r["prompt"], r["db_id"], r["query"]) for r in rows]


def run(ctx: StageContext) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from ..models.loading import load_policy_from_step, read_model_ref, write_model_ref
    from ..rl.grpo.trainer import GRPOTrainer
    from ..rl.reward_model import add_lora
    from ..rl.rewards import ExecutionJudge
    from ..sql.sandbox import SandboxPool
    from .rm_data import read_prompts

    cfg: GRPOConfig = ctx.config
    seed = ctx.run_config.seed
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    prepared = ctx.input("prepare")
    examples = _examples(read_prompts(prepared, "train")[:cfg.train_prompts])
    eval_train = random.Random(seed).sample(examples, min(cfg.eval_train_prompts, len(examples)))
    eval_dev = _examples(read_prompts(prepared, "dev")[:cfg.eval_dev_prompts]) if cfg.eval_dev_prompts else []

    torch.manual_seed(seed)
    sft_ref = read_model_ref(ctx.input("sft"))
    policy, tokenizer = load_policy_from_step(ctx, "sft")
    if hasattr(policy, "merge_and_unload"):  # a quantized base keeps its SFT adapter attached
        raise BadInput("GRPO needs the SFT adapters merged into the base; 4-bit (QLoRA) policies are not "
                       "supported by the grpo stage: set model.quantization: none", field="model.quantization")
    policy = add_lora(policy, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=0.0,
                      target_modules=cfg.lora_target_modules, task="CAUSAL_LM").eval()

    pool = SandboxPool(cfg.sandbox_processes)
    try:
        judge = ExecutionJudge(prepared / "database", timeout_s=cfg.sql_timeout_s, row_cap=cfg.row_cap, pool=pool)
        trainer = GRPOTrainer(policy, tokenizer, examples, cfg, judge=judge, seed=seed)
        latest = ctx.checkpoints.latest()
        resumed_from = 0
        baseline: dict[str, Any] = {}
        if latest is not None:
            resumed_from, ckpt = latest
            trainer.load(ckpt)
            baseline = json.loads((ckpt / "baseline.json").read_text())
            ctx.log.info("grpo resumed", step=resumed_from, optimizer_steps=trainer.optimizer_steps())
        else:
            ctx.log.info("evaluating the SFT policy before GRPO", train_prompts=len(eval_train),
                         dev_prompts=len(eval_dev))
            if eval_train:
                baseline["train"] = trainer.evaluate(eval_train, cfg.eval_batch_size)
            if eval_dev:
                baseline["dev"] = trainer.evaluate(eval_dev, cfg.eval_batch_size)
        resume_record = {"event": "start", "resumed_from_step": resumed_from,
                         "optimizer_steps": trainer.optimizer_steps()}

        bar = tqdm(total=cfg.max_steps, initial=trainer.global_step, desc="grpo", unit="step", file=sys.stderr,
                   leave=False)
        while trainer.global_step < cfg.max_steps:
            record = trainer.step()
            bar.update(1)
            step = trainer.global_step
            if step % cfg.logging_steps == 0 or step == cfg.max_steps:
                ctx.progress(step=step, total=cfg.max_steps, reward=record["reward"], loss=record["policy_loss"],
                             frac_reward_zero_std=record["frac_reward_zero_std"])
            if step % cfg.save_steps == 0 and step < cfg.max_steps:
                directory = ctx.workdir / "checkpoint_out" / f"{step:08d}"
                trainer.save(directory)
                (directory / "baseline.json").write_text(json.dumps(baseline) + "\n")
                ctx.checkpoints.save(step, directory, metrics={"reward": record["reward"]})
        bar.close()

        final: dict[str, Any] = {}
        if eval_train:
            final["train"] = trainer.evaluate(eval_train, cfg.eval_batch_size)
        if eval_dev:
            final["dev"] = trainer.evaluate(eval_dev, cfg.eval_batch_size)
    finally:
        pool.close()

    out = ctx.output_dir
    trainer.publish_actor(out / "adapter")
    write_model_ref(out, sft_ref.with_adapter(ctx.step.name, "adapter"))
    (out / "grpo_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [resume_record, *trainer.history]))
    (out / "eval.json").write_text(json.dumps({"before": baseline, "after": final}, indent=2) + "\n")
    _plot_curves(trainer.history, out / "curves.png")

    last = trainer.history[-min(5, len(trainer.history)):]
    metrics: dict[str, Any] = {
        "algorithm": "grpo",
        "steps": trainer.global_step,
        "resumed_from_step": resumed_from,
        "optimizer_steps": trainer.optimizer_steps(),
        "samples": trainer.global_step * cfg.batch_size * cfg.num_generations,
        "rollout_reward_first": trainer.history[0]["reward"],
        "rollout_reward_final": sum(r["reward"] for r in last) / len(last),
        "frac_reward_zero_std_final": sum(r["frac_reward_zero_std"] for r in last) / len(last),
    }
    for split in ("train", "dev"):
        for when, source in (("before", baseline), ("after", final)):
            for key, value in source.get(split, {}).items():
                metrics[f"{split}_{key}_{when}"] = value
    return metrics


STAGE = Stage(name="grpo", config_cls=GRPOConfig, run=run,
              description="GRPO of the SFT policy with group-normalised execution rewards (no critic).")
