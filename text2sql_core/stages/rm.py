"""The ``rm`` stage: a reward model that scores (prompt, SQL), trained on the mined preference pairs.

The SFT model gets a one-label sequence-classification head (the score, read at the response's last
token) and LoRA adapters; the loss is the pairwise ``-log sigmoid(r_chosen - r_rejected)`` of
InstructGPT. Pairwise accuracy (``r_chosen > r_rejected``) on the held-out pairs of ``rm_data`` is the
stage's metric. Training checkpoints (adapter, head, optimizer, scheduler, RNG, step) are published
every ``save_steps`` and a rerun resumes from the newest.

Published files: ``adapter/`` (the PEFT adapter: LoRA weights and the trained ``score`` head),
``reward_model.json`` (the policy step it sits on and that policy's lineage; rebuild it with
:func:`text2sql_core.rl.reward_model.load_reward_model`), ``rm_log.jsonl`` (loss / accuracy per
logged step), ``eval.json`` (final held-out and training-sample pairwise accuracy).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from .. import distributed
from ..data.jsonl import read_numbered_records
from ..errors import BadInput
from .base import Stage, StageConfigBase, StageContext

__all__ = ["STAGE", "RMConfig", "run"]


class RMConfig(StageConfigBase):
    """Reward-model training settings. Budgets are optimisation steps, never wall time."""

    # Optimisation
    max_steps: int = Field(300, ge=1, description="Optimisation steps (each is batch_size pairs).")
    batch_size: int = Field(16, ge=1, description="Preference pairs per step, global: split evenly over the ranks "
                                                  "under torchrun (a multiple of the world size).")
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate (adapters and score head).")
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of max_steps spent warming up linearly.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    max_length: int = Field(1280, ge=16, description="Prompt + SQL tokens kept (the prompt's beginning is cut).")
    # Adapter
    lora_r: int = Field(16, ge=1, description="LoRA rank of the reward model's adapters.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (update scaled by alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters: `all-linear` or a list of module names.")
    # Bookkeeping
    eval_steps: int = Field(50, ge=1, description="Measure held-out pairwise accuracy every N steps.")
    save_steps: int = Field(50, ge=1, description="Publish a checkpoint every N steps; a rerun resumes there.")
    logging_steps: int = Field(10, ge=1, description="Record loss and train accuracy every N steps.")
    num_threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: all cores.")


PAIR_FIELDS = ("prompt", "chosen", "rejected")


def read_pairs(path: Path) -> list[dict[str, Any]]:
    """Preference pairs from a JSONL file; every record needs non-empty ``prompt``, ``chosen``, ``rejected``."""
    pairs = []
    for line, rec in read_numbered_records(path, missing="missing from the rm_data step's artifacts"):
        for f in PAIR_FIELDS:
            if not isinstance(rec.get(f), str) or not rec[f].strip():
                raise BadInput("missing or empty", uri=str(path), record=f"line {line}", field=f)
        pairs.append(rec)
    return pairs


def batch_for_step(pairs: list[dict[str, Any]], step: int, batch_size: int, seed: int) -> list[dict[str, Any]]:
    """The pairs of (0-based) step ``step``: slices of a seeded permutation per epoch, so a resume sees the same."""
    n = len(pairs)
    out = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, n)
        order = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(pairs[order[offset]])
    return out


def _lineage(ctx: StageContext, step: str) -> dict[str, Any]:
    """The upstream model's ``model_ref.json`` (what it was trained from), or its step and config hash."""
    ref = ctx.input(step) / "model_ref.json"
    if ref.is_file():
        return json.loads(ref.read_text())
    return {"step": step, "config_hash": ctx.input_manifest(step).config_hash}


def _adam_steps(optimizer) -> int:
    """Steps the optimizer has taken, from its state: a resumed run that restored it counts from the start."""
    states = [s for s in optimizer.state.values() if "step" in s]
    return int(states[0]["step"]) if states else 0


def run(ctx: StageContext) -> dict[str, Any]:
    import torch
    from tqdm import tqdm
    from transformers import get_scheduler

    from ..models.checkpoint import (
        load_trainable_state,
        load_training_state,
        save_training_state,
        trainable_state,
    )
    from ..models.loading import load_policy_from_step
    from ..rl.reward_model import (
        REWARD_MODEL_FILE,
        add_lora,
        pair_scores,
        pairwise_accuracy,
        pairwise_loss,
        sequence_classifier_from_policy,
    )

    cfg: RMConfig = ctx.config
    seed = ctx.run_config.seed
    world = distributed.world()
    # data parallel: every rank scores a disjoint share of each step's (global) batch of pairs
    distributed.split_batch(cfg.batch_size, "stages.rm.batch_size", world)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    pairs_dir = ctx.input("rm_data")
    train = read_pairs(pairs_dir / "train_pairs.jsonl")
    held_out = read_pairs(pairs_dir / "eval_pairs.jsonl")
    if not train:
        raise BadInput("no training pairs", uri=str(pairs_dir / "train_pairs.jsonl"), stage=ctx.step.name)

    torch.manual_seed(seed)
    policy, tokenizer = load_policy_from_step(ctx, "sft")
    lineage = _lineage(ctx, "sft")
    model = sequence_classifier_from_policy(policy, tokenizer)
    del policy
    model = add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                     target_modules=cfg.lora_target_modules, task="SEQ_CLS")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=round(cfg.warmup_ratio * cfg.max_steps),
                              num_training_steps=cfg.max_steps)
    history: list[dict[str, Any]] = []
    start = 0
    latest = ctx.checkpoints.latest()
    if latest is not None:
        start, ckpt_dir = latest  # every rank restores the one checkpoint rank 0 found
        state = load_training_state(ckpt_dir)
        load_trainable_state(model, state["trainable"], what="reward model")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = state["history"]
        ctx.log.info("reward model resumed", step=start)

    def save_checkpoint(step: int) -> None:
        if not world.is_main:  # the same weights and optimizer state live on every rank
            return
        directory = ctx.workdir / "checkpoint_out" / f"{step:08d}"
        save_training_state(directory, {"trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
                                        "scheduler": scheduler.state_dict(), "history": history}, step=step)
        ctx.checkpoints.save(step, directory, metrics={"loss": history[-1]["loss"] if history else None})

    model.train()
    distributed.broadcast_parameters(params)  # the ranks start from one set of weights
    bar = tqdm(total=cfg.max_steps, initial=start, desc="rm", unit="step", file=sys.stderr, leave=False,
               disable=not world.is_main)
    for step in range(start + 1, cfg.max_steps + 1):
        batch = distributed.shard(batch_for_step(train, step - 1, cfg.batch_size, seed), world)
        r_chosen, r_rejected = pair_scores(model, tokenizer, batch, cfg.max_length)
        loss = pairwise_loss(r_chosen, r_rejected)  # mean over this rank's equal share
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.all_reduce_gradients(params)  # the mean over ranks: the global batch's gradient
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        bar.update(1)
        if step % cfg.logging_steps == 0 or step == cfg.max_steps:
            logged = distributed.all_reduce_mean({"loss": loss.item(),
                                                  "accuracy": float((r_chosen > r_rejected).float().mean())})
            record: dict[str, Any] = {"step": step, "loss": round(logged["loss"], 6),
                                      "accuracy": logged["accuracy"], "lr": scheduler.get_last_lr()[0]}
            if step % cfg.eval_steps == 0 and held_out:
                model.eval()
                record["eval_accuracy"] = pairwise_accuracy(model, tokenizer, held_out, cfg.max_length)["accuracy"]
                model.train()
            history.append(record)
            ctx.progress(step=step, total=cfg.max_steps, loss=record["loss"])
        if step % cfg.save_steps == 0 and step < cfg.max_steps:
            save_checkpoint(step)
    bar.close()

    model.eval()
    if not world.is_main:  # rank 0 evaluates and publishes the weights every rank holds
        return {}
    final = pairwise_accuracy(model, tokenizer, held_out, cfg.max_length) if held_out else None
    train_eval = pairwise_accuracy(model, tokenizer, train[:256], cfg.max_length)
    out = ctx.output_dir
    model.save_pretrained(out / "adapter")
    info = {"format": 1, "step": ctx.step.name, "policy_step": "sft", "policy": lineage, "adapter": "adapter",
            "head": "score: one label, read at the response's last token (its EOS)",
            "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "target_modules": cfg.lora_target_modules}}
    (out / REWARD_MODEL_FILE).write_text(json.dumps(info, indent=2) + "\n")
    (out / "rm_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    (out / "eval.json").write_text(json.dumps({"held_out": final, "train_sample": train_eval}, indent=2) + "\n")
    metrics: dict[str, Any] = {}
    if final is not None:  # no held-out pairs (rm_data.eval_fraction: 0): nothing to report
        metrics = {"eval_accuracy": final["accuracy"], "eval_margin": final["margin"], "eval_pairs": final["pairs"]}
        for origin, got in final.get("by_origin", {}).items():  # e.g. eval_accuracy_model, ..._perturb_swap_column
            metrics[f"eval_accuracy_{origin.replace(':', '_')}"] = got["accuracy"]
    ctx.log.info("reward model trained", **metrics)
    return {
        **metrics,
        "train_accuracy": train_eval["accuracy"],
        "train_pairs": len(train),
        "resumed_from_step": start,
        "optimizer_steps": _adam_steps(optimizer),
        "steps": cfg.max_steps,
    }


STAGE = Stage(name="rm", config_cls=RMConfig, run=run,
              description="Train the reward model (pairwise loss) on the mined preference pairs.")
