"""The ``sft`` stage: supervised fine-tuning on the prepared prompt -> SQL pairs (``train_flat.jsonl``).

Built on the Hugging Face ``Trainer`` (cosine schedule, gradient accumulation, DeepSpeed ZeRO via
``deepspeed``, its checkpoint layout: model, optimizer, scheduler, RNG and trainer state) with
these changes, all in :mod:`text2sql_core.models.batching`:

- the loss covers the completion only, and the language-model head runs on the completion
  positions alone (``logits_to_keep`` on left-padded batches);
- with ``shared_prefix`` (default) a batch holds examples of one database, and the instruction +
  schema prefix they share runs once per batch, its key/value cache repeated over the rows: the
  same loss and gradients, about a sixth of the tokens on the demo data;
- the batch order is planned up front from the seed, so a resumed run replays exactly the batches
  the interrupted one would have seen (a kill -9 and rerun ends with the weights of an
  uninterrupted run);
- ``value_augmentation`` rewrites a share of the examples with random values in place of the
  ones the SQL copies from the question (:mod:`text2sql_core.models.augment`), so that the model
  learns to copy values rather than recall the training set's;
- checkpoints are published to the artifact store every ``save_steps`` (``ctx.checkpoints``) and a
  rerun resumes from the newest complete one.

TRL's ``SFTTrainer`` was the starting point; it computes logits for every prompt position and
re-runs the shared schema for every row, several times the cost of a tiny-model step on CPU for
the same completion-only loss.

Model:

- ``model.path: tiny``: a tokenizer is trained on the training prompts and SQL and a small Llama is
  built from scratch; all weights train (LoRA on random weights makes no sense). Published as
  ``model/`` (weights + tokenizer).
- a pretrained base (local or ``store://models/<name>``) with ``model.lora.enabled``: a LoRA adapter
  trains, published in PEFT format as ``adapter/`` (tokenizer included), plus ``merged/`` with
  ``merge_adapter``. Without LoRA all weights train and ``model/`` is published.

Also published: ``model_ref.json`` (the lineage, see :mod:`text2sql_core.models.loading`),
``loss_log.jsonl`` (one ``{step, loss, learning_rate, tokens_per_s}`` per ``logging_steps``) and
``loss_curve.png``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from .. import distributed
from ..data.jsonl import read_numbered_records
from ..errors import BadInput
from .base import Stage, StageConfigBase, StageContext

__all__ = ["STAGE", "SFTConfig", "read_flat_pairs", "run", "write_loss_curve"]


class SFTConfig(StageConfigBase):
    """Supervised fine-tuning settings. Budgets are in optimisation steps, never in wall time."""

    max_steps: int = Field(1500, ge=1, description="Optimisation steps (each is batch_size x "
                                                  "gradient_accumulation_steps examples).")
    batch_size: int = Field(32, ge=1, description="Examples per forward pass, global: split evenly over the "
                                                  "ranks under torchrun (a multiple of the world size).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Forward passes per optimisation step.")
    learning_rate: float = Field(3e-3, gt=0, description="Peak learning rate (3e-3 suits the from-scratch tiny "
                                                         "model; use about 2e-4 for LoRA on a pretrained base).")
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of max_steps spent warming up linearly.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    max_source_length: int = Field(768, ge=8, description="Prompt tokens kept (longer prompts lose their "
                                                           "beginning: the question at the end survives).")
    max_target_length: int = Field(256, ge=4, description="SQL tokens kept (longer targets are cut).")
    save_steps: int = Field(250, ge=1, description="Publish a checkpoint (model, optimizer, scheduler, RNG, step) "
                                                   "every N optimisation steps; a rerun resumes from the newest.")
    logging_steps: int = Field(50, ge=1, description="Record the loss every N optimisation steps.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass "
                                                            "(less memory, about 30% slower).")
    deepspeed: dict[str, Any] | None = Field(
        None, description="A DeepSpeed config (JSON object, e.g. ZeRO stage 2/3) handed to the HF Trainer; "
                          "needs GPUs and a distributed launch.")
    merge_adapter: bool = Field(False, description="With LoRA, also publish `merged/`: the base with the adapter "
                                                   "merged in, loadable without PEFT.")
    value_augmentation: float = Field(
        0.5, ge=0, le=1, description="Share of the training examples whose values copied from the question "
                                     "(quoted strings, numbers) are replaced, in question and SQL alike, by random "
                                     "ones of the same shape each time they are drawn: teaches copying instead of "
                                     "recalling values seen in training. 0 turns it off.")
    shared_prefix: bool = Field(True, description="Batch examples of one database together and run the prompt "
                                                  "prefix they share (instruction + schema) once per batch: the "
                                                  "same loss and gradients, several times fewer tokens.")
    num_threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: all cores.")


def read_flat_pairs(path: Path) -> list[tuple[str, str]]:
    """``(prompt, output)`` of every line of a ``*_flat.jsonl``; ``BadInput`` names the line and field."""
    pairs: list[tuple[str, str]] = []
    for n, rec in read_numbered_records(path):
        for key in ("prompt", "output"):
            if not isinstance(rec.get(key), str):
                raise BadInput("missing or not a string", uri=str(path), record=f"line {n}", field=key)
        pairs.append((rec["prompt"], rec["output"]))
    if not pairs:
        raise BadInput("holds no examples", uri=str(path))
    return pairs


def write_loss_curve(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """Plot loss against step to ``path`` (PNG), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    steps = [r["step"] for r in records]
    ax.plot(steps, [r["loss"] for r in records], marker="." if len(records) < 40 else None)
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("completion loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _example_groups(ctx: StageContext, n: int) -> list[str]:
    """The database of every training example (``train_meta.jsonl``, aligned with ``train_flat.jsonl``)."""
    path = ctx.input("prepare") / "train_meta.jsonl"
    if not path.is_file():
        raise BadInput("missing: the prepare step publishes it (or set stages.sft.shared_prefix: false)",
                       uri=str(path), stage=ctx.step.name)
    groups: list[str] = []
    for i, rec in read_numbered_records(path):
        db_id = rec.get("db_id")
        if not isinstance(db_id, str):
            raise BadInput("missing or not a string", uri=str(path), record=f"line {i}", field="db_id")
        groups.append(db_id)
    if len(groups) != n:
        raise BadInput(f"has {len(groups)} records but train_flat.jsonl has {n}: the files are not aligned",
                       uri=str(path), stage=ctx.step.name)
    return groups


def _build_model(ctx: StageContext, pairs: list[tuple[str, str]], resume_dir: Path | None):
    """(model, tokenizer, base ref) for training, per ``ctx.run_config.model``."""
    from ..models.loading import base_ref_for, load_causal_lm, load_tokenizer, resolve_base_dir
    from ..models.lora import apply_lora, require_4bit_support
    from ..models.tiny import build_tiny_model
    from ..models.tokenizer import train_tokenizer

    mcfg = ctx.run_config.model
    cfg: SFTConfig = ctx.config
    if mcfg.is_tiny:
        if resume_dir is not None and (resume_dir / "tokenizer.json").is_file():
            tokenizer = load_tokenizer(resume_dir)  # the very tokenizer the checkpoint was trained with
        else:
            tokenizer = train_tokenizer((f"{p}{o}" for p, o in pairs), mcfg.tiny.vocab_size,
                                        min_frequency=mcfg.tiny.min_token_frequency)
        model = build_tiny_model(mcfg.tiny, tokenizer)
        if mcfg.dtype != "fp32":
            from ..models.loading import torch_dtype

            model = model.to(torch_dtype(mcfg.dtype))
        return model, tokenizer, None
    if mcfg.quantization == "4bit":
        require_4bit_support()
    base_dir = resolve_base_dir(mcfg, ctx.store, ctx.workdir / "base_model")
    tokenizer = load_tokenizer(base_dir, trust_remote_code=mcfg.trust_remote_code)
    model = load_causal_lm(base_dir, dtype=mcfg.dtype, quantization=mcfg.quantization,
                           trust_remote_code=mcfg.trust_remote_code)
    if mcfg.uses_lora:
        model = apply_lora(model, mcfg.lora, gradient_checkpointing=cfg.gradient_checkpointing)
    return model, tokenizer, base_ref_for(mcfg, base_dir)


def run(ctx: StageContext) -> dict[str, Any]:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_utils import set_seed

    from ..models.augment import swap_copied_values
    from ..models.batching import collate, completion_loss, encode_examples, plan_batches, shard_batch
    from ..models.loading import BaseRef, DirRef, ModelRef, write_model_ref
    from ..models.lora import trainable_parameters

    cfg: SFTConfig = ctx.config
    mcfg = ctx.run_config.model
    seed = ctx.run_config.seed
    world = distributed.world()
    # every rank trains a disjoint share of each planned (global) batch; refuse an uneven split early
    distributed.split_batch(cfg.batch_size, "stages.sft.batch_size", world)
    torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // world.local_size))
    if cfg.deepspeed is not None and not torch.cuda.is_available():
        raise BadInput("stages.sft.deepspeed is set but no CUDA GPU is visible: DeepSpeed ZeRO needs GPUs",
                       field="stages.sft.deepspeed", stage=ctx.step.name)

    pairs = read_flat_pairs(ctx.input("prepare") / "train_flat.jsonl")
    latest = ctx.checkpoints.latest()
    resume_step, resume_dir = latest if latest is not None else (0, None)
    set_seed(seed)
    model, tokenizer, base_ref = _build_model(ctx, pairs, resume_dir)
    source_length = cfg.max_source_length
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and source_length + cfg.max_target_length > limit:
        source_length = max(8, limit - cfg.max_target_length)  # prompt + SQL must fit the model's positions
        ctx.log.info("prompts cut to fit the model", max_source_length=source_length, max_positions=limit)

    def encode(batch: list[tuple[str, str]]):
        return encode_examples(tokenizer, batch, max_source_length=source_length,
                               max_target_length=cfg.max_target_length)

    examples = encode(pairs)
    trainable, total = trainable_parameters(model)
    mean_len = sum(len(e.input_ids) for e in examples) / len(examples)
    ctx.log.info("sft data encoded", examples=len(examples), mean_tokens=round(mean_len, 1),
                 vocab=len(tokenizer), trainable_params=trainable, total_params=total,
                 resume_from_step=resume_step or None)
    pad_id = tokenizer.pad_token_id
    groups = _example_groups(ctx, len(pairs)) if cfg.shared_prefix else None

    def variant(i: int, rng: random.Random):
        """Value augmentation (see :mod:`text2sql_core.models.augment`), drawn from the plan's RNG."""
        if cfg.value_augmentation <= 0 or rng.random() >= cfg.value_augmentation:
            return None
        return swap_copied_values(pairs[i][0], pairs[i][1], rng)

    plan = plan_batches(examples, batch_size=cfg.batch_size, seed=seed, groups=groups, variant=variant,
                        encode=encode, num_batches=cfg.max_steps * cfg.gradient_accumulation_steps)

    tokens_seen = [0]  # global: every token of every planned batch, whichever rank trained it

    class _Plan(torch.utils.data.Dataset):
        """Item i is this rank's share of the i-th planned batch: the order is fixed, so a resume replays
        it exactly, on any number of ranks."""

        def __len__(self) -> int:
            return len(plan)

        def __getitem__(self, i: int):
            tokens_seen[0] += sum(len(e.input_ids) for e in plan[i].examples)
            return shard_batch(plan[i], world.rank, world.size)

    class _SFTTrainer(Trainer):
        loss_is_scaled_for_ga = True

        def get_train_dataloader(self):
            # every rank walks the whole plan and takes its share of each batch (_Plan); the default
            # loader would instead deal whole batches out to the ranks, changing the global batch
            return torch.utils.data.DataLoader(
                self.train_dataset, batch_size=1, sampler=torch.utils.data.SequentialSampler(self.train_dataset),
                collate_fn=self.data_collator, num_workers=0)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if num_items_in_batch is not None:
                # num_items_in_batch counts the completion tokens of all ranks; DDP averages gradients over
                # the ranks, so scale by their number: the gradient of (all ranks' summed loss) / tokens
                loss = completion_loss(model, inputs, reduction="sum") * world.size / num_items_in_batch
            else:
                loss = completion_loss(model, inputs) / self.current_gradient_accumulation_steps
            return (loss, None) if return_outputs else loss

    work = ctx.workdir / "trainer"
    if work.exists():
        shutil.rmtree(work)
    log_records: list[dict[str, Any]] = []

    class _Publish(TrainerCallback):
        """Publish every checkpoint the Trainer writes; report progress and keep the loss log."""

        def __init__(self) -> None:
            self._t = time.monotonic()
            self._tokens = 0

        def on_save(self, args, state, control, **kwargs):
            local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and local.is_dir():
                tokenizer.save_pretrained(str(local))
                ctx.checkpoints.save(state.global_step, local, metrics={"loss": _last_loss(state)})
                shutil.rmtree(local, ignore_errors=True)
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs:
                return control
            now = time.monotonic()
            rate = (tokens_seen[0] - self._tokens) / max(now - self._t, 1e-9)
            self._t, self._tokens = now, tokens_seen[0]
            rec = {"step": state.global_step, "loss": float(logs["loss"]),
                   "learning_rate": float(logs.get("learning_rate", 0.0)), "tokens_per_s": round(rate, 1)}
            log_records.append(rec)
            ctx.progress(step=state.global_step, total=cfg.max_steps, loss=rec["loss"],
                         tokens_per_s=rec["tokens_per_s"], learning_rate=rec["learning_rate"])
            return control

    use_gpu = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(work),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=1,  # one planned batch of cfg.batch_size examples
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=math.ceil(cfg.warmup_ratio * cfg.max_steps),
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        adam_beta2=0.95,
        # at least once, at the last step: a resume at the final checkpoint then still has its loss
        logging_steps=min(cfg.logging_steps, cfg.max_steps),
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_only_model=False,
        report_to=[],
        seed=seed,
        data_seed=seed,
        use_cpu=not use_gpu,
        bf16=use_gpu and mcfg.dtype == "bf16",
        fp16=use_gpu and mcfg.dtype == "fp16",
        activation_checkpointing=cfg.gradient_checkpointing,
        deepspeed=cfg.deepspeed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,  # the Trainer's own bar and printer repeat every log as a dict: see progress_bar
        average_tokens_across_devices=True,
        ddp_find_unused_parameters=False,  # every weight is used by every step
        logging_first_step=False,
    )
    trainer = _SFTTrainer(model=model, args=args, train_dataset=_Plan(),
                          data_collator=lambda items: collate(items[0], pad_id),
                          callbacks=[_Publish(), *([progress_bar(cfg.max_steps)] if _is_tty() and world.is_main
                                                    else [])])
    _quiet_trainer(trainer)
    started = time.monotonic()
    _no_shard_bars()
    result = trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir is not None else None)
    seconds = time.monotonic() - started

    # Adam's own step counter: equals max_steps only when a resumed run restored the optimizer state.
    try:
        opt_steps = [int(s["step"]) for s in trainer.optimizer.state_dict()["state"].values() if "step" in s]
    except (AttributeError, KeyError, TypeError):  # DeepSpeed's optimizers keep their state elsewhere
        opt_steps = []
    optimizer_step = max(opt_steps) if opt_steps else 0

    out = ctx.output_dir
    final = trainer.model
    if not world.is_main:  # rank 0 publishes; the same weights live on every rank
        shutil.rmtree(work, ignore_errors=True)
        return {}
    if mcfg.uses_lora:
        final.save_pretrained(str(out / "adapter"))
        tokenizer.save_pretrained(str(out / "adapter"))
        if cfg.merge_adapter and mcfg.quantization == "none":
            merged = final.merge_and_unload()
            merged.save_pretrained(str(out / "merged"))
            tokenizer.save_pretrained(str(out / "merged"))
        assert base_ref is not None
        ref = ModelRef(step=ctx.step.name, base=base_ref, adapters=[DirRef(step=ctx.step.name, dir="adapter")],
                       merged=cfg.merge_adapter and mcfg.quantization == "none",
                       tokenizer=DirRef(step=ctx.step.name, dir="adapter"), dtype=mcfg.dtype,
                       quantization=mcfg.quantization, trust_remote_code=mcfg.trust_remote_code)
    else:
        final.save_pretrained(str(out / "model"))
        tokenizer.save_pretrained(str(out / "model"))
        ref = ModelRef(step=ctx.step.name, base=BaseRef(source="step", step=ctx.step.name, dir="model"),
                       tokenizer=DirRef(step=ctx.step.name, dir="model"), dtype=mcfg.dtype,
                       trust_remote_code=mcfg.trust_remote_code)
    write_model_ref(out, ref)

    # the loss log survives a resume: the Trainer restores its log history from the checkpoint
    history = {int(h["step"]): h for h in trainer.state.log_history if "loss" in h}
    live = {r["step"]: r for r in log_records}
    records = [{"step": s, "loss": float(h["loss"]), "learning_rate": float(h.get("learning_rate", 0.0)),
                "tokens_per_s": live.get(s, {}).get("tokens_per_s")} for s, h in sorted(history.items())]
    _atomic_write(out / "loss_log.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    if records:
        write_loss_curve(records, out / "loss_curve.png", f"SFT {ctx.run_id}: {mcfg.path}")

    trained_tokens = tokens_seen[0]
    metrics: dict[str, Any] = {
        "steps": int(trainer.state.global_step),
        "resumed_from_step": int(resume_step),
        "optimizer_step": optimizer_step,
        "final_loss": round(records[-1]["loss"], 5) if records else round(float(result.training_loss), 5),
        "train_examples": len(examples),
        "trainable_params": trainable,
        "total_params": total,
        "vocab_size": len(tokenizer),
        "mean_tokens_per_example": round(mean_len, 1),
        "train_seconds": round(seconds, 2),
        "tokens_per_s": round(trained_tokens / seconds, 1) if seconds > 0 else 0.0,
    }
    shutil.rmtree(work, ignore_errors=True)
    return metrics


def _last_loss(state: Any) -> float | None:
    for h in reversed(state.log_history):
        if "loss" in h:
            return float(h["loss"])
    return None


def _is_tty() -> bool:
    import sys

    return sys.stderr.isatty()


def progress_bar(total: int) -> Any:
    """A Trainer callback drawing one tqdm bar (steps, ETA, last loss) on stderr, nothing else."""
    import sys

    from tqdm import tqdm
    from transformers import TrainerCallback

    class _Bar(TrainerCallback):
        bar: Any = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = tqdm(total=total, initial=state.global_step, desc="sft", unit="step", file=sys.stderr,
                                dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return _Bar()


def _quiet_trainer(trainer: Any) -> None:
    """Drop the Trainer's printer: it repeats every log as a dict (``epoch: 1`` over a planned dataset)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)


def _no_shard_bars() -> None:
    """No "Writing model shards" bar from transformers at every checkpoint and final save of this step.

    Off for the rest of the process: a step runs in a process of its own (``t2s stage run``).
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


STAGE = Stage(name="sft", config_cls=SFTConfig, run=run,
              description="Supervised fine-tuning with a completion-only loss; checkpoints and resume.")
