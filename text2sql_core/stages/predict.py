"""The ``predict`` stage: SQL for every dev question from a trained policy (``predict_sft``, ``predict_rl``).

The policy is the model published by the step's ``model_from`` upstream (``sft`` or ``rl``), rebuilt
from its ``model_ref.json`` (:func:`text2sql_core.models.loading.load_policy_from_step`). Prompts are
``dev_flat.jsonl`` of the prepare step, generated in left-padded batches, greedy by default
(sampled decoding made the reference results noisy); each output stops at the end of its first
statement and is cleaned (:func:`text2sql_core.models.generation.clean_sql`).

Published files, one row per dev question in dev order:

- ``predictions.jsonl``: ``{index, db_id, prediction, raw}`` (``raw``: the text as generated);
- ``predictions.sql``: one prediction a line, aligned with ``dev_gold.sql`` (the Spider evaluator's
  input); an empty prediction is written as ``SELECT`` so that no line is blank.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from .. import distributed
from ..data.jsonl import read_records
from ..errors import BadInput
from .base import Stage, StageConfigBase, StageContext

__all__ = ["STAGE", "PredictConfig", "read_dev_prompts", "run"]


class PredictConfig(StageConfigBase):
    """Generation settings. Greedy by default: sampled decoding made the reference results noisy."""

    batch_size: int = Field(32, ge=1, description="Prompts generated together (left-padded).")
    max_new_tokens: int = Field(128, ge=1, description="Longest SQL generated, in tokens.")
    max_source_length: int = Field(768, ge=8, description="Prompt tokens kept (the beginning is cut first).")
    decoding: Literal["greedy", "sample"] = Field("greedy", description="Greedy (deterministic) or sampled.")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature (decoding: sample only).")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass (decoding: sample only).")
    copy_values: bool = Field(False, description="Constrain quoted values in the SQL to words copied from the "
                                                 "question (helps small models that cannot copy unseen words yet).")
    execution_guided: int = Field(
        0, ge=0, le=32, description="N >= 2: where the greedy SQL fails to execute on the question's database "
                                    "(SQL sandbox), beam search with N beams runs and the best beam that executes "
                                    "is the prediction (execution-guided decoding; greedy only). 0 or 1: off.")
    sql_timeout_s: float = Field(5.0, gt=0, description="Per-query timeout when execution_guided runs candidates.")
    limit: int | None = Field(None, ge=1, description="Predict only the first N dev questions (quick checks).")
    num_threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: all cores.")


def read_dev_prompts(prepared: Path) -> list[tuple[int, str, str]]:
    """``(index, db_id, prompt)`` for every dev question, from ``dev_flat.jsonl`` + ``dev_meta.jsonl``."""
    flat_path, meta_path = prepared / "dev_flat.jsonl", prepared / "dev_meta.jsonl"
    flats, metas = read_records(flat_path), read_records(meta_path)
    if len(flats) != len(metas):
        raise BadInput(f"{len(flats)} prompts but {len(metas)} records in dev_meta.jsonl: not aligned",
                       uri=str(flat_path))
    out = []
    for n, (flat, meta) in enumerate(zip(flats, metas, strict=True), start=1):
        if not isinstance(flat.get("prompt"), str):
            raise BadInput("missing or not a string", uri=str(flat_path), record=f"line {n}", field="prompt")
        if not isinstance(meta.get("db_id"), str):
            raise BadInput("missing or not a string", uri=str(meta_path), record=f"line {n}", field="db_id")
        index = meta.get("index", n - 1)
        if not isinstance(index, int):
            raise BadInput("not an integer", uri=str(meta_path), record=f"line {n}", field="index")
        out.append((index, meta["db_id"], flat["prompt"]))
    if not out:
        raise BadInput("holds no dev questions", uri=str(flat_path))
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def run(ctx: StageContext) -> dict[str, Any]:
    import torch

    from ..models.generation import EMPTY_PREDICTION, generate_sharded, lora_layers, merged_for_inference
    from ..models.loading import load_policy_from_step

    cfg: PredictConfig = ctx.config
    source = ctx.step.model_from
    if source is None:
        raise BadInput(f"step {ctx.step.name!r} names no model_from step to predict with", stage=ctx.step.name)
    world = distributed.world()
    torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // world.local_size))
    torch.manual_seed(ctx.run_config.seed)

    questions = read_dev_prompts(ctx.input("prepare"))
    if cfg.limit is not None:
        questions = questions[: cfg.limit]
    model, tokenizer = load_policy_from_step(ctx, source)
    model = merged_for_inference(model)  # adapters merged once per load: the RL policy decodes as fast as SFT
    ctx.log.info("policy loaded", source=source, questions=len(questions), decoding=cfg.decoding,
                 unmerged_lora_layers=lora_layers(model))

    started = time.monotonic()
    # under torchrun every rank generates a share of the batches; every rank gets all outputs back, in
    # dev order, because execution-guided decoding re-decodes the failing ones sharded the same way
    outputs = generate_sharded(
        model, tokenizer, [q[2] for q in questions], batch_size=cfg.batch_size, everywhere=True,
        max_new_tokens=cfg.max_new_tokens, max_source_length=cfg.max_source_length,
        do_sample=cfg.decoding == "sample", temperature=cfg.temperature, top_p=cfg.top_p,
        copy_values=cfg.copy_values, progress=f"{ctx.step.name}",
        on_batch=lambda done, total: ctx.progress(step=done, total=total))
    assert outputs is not None  # everywhere=True: every rank holds them
    chosen = [(g.raw, g.sql) for g in outputs]
    guided: dict[str, Any] = {}
    if cfg.execution_guided >= 2 and cfg.decoding == "greedy":
        guided = _execution_guided(cfg, model, tokenizer, questions, chosen, ctx.input("prepare") / "database")
        ctx.log.info("execution-guided decoding", **guided)
    seconds = time.monotonic() - started
    if not world.is_main:  # rank 0 holds the same outputs and publishes them
        return {}

    rows = [{"index": index, "db_id": db_id, "prediction": sql, "raw": raw}
            for (index, db_id, _), (raw, sql) in zip(questions, chosen, strict=True)]
    out = ctx.output_dir
    _atomic_write(out / "predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    _atomic_write(out / "predictions.sql", "".join(r["prediction"] + "\n" for r in rows))
    new_tokens = sum(len(g.token_ids) for g in outputs)
    return {
        "predictions": len(rows),
        "empty_predictions": sum(r["prediction"] == EMPTY_PREDICTION for r in rows),
        "stopped_at_eos": sum(bool(g.token_ids) and g.token_ids[-1] == tokenizer.eos_token_id for g in outputs),
        "mean_new_tokens": round(new_tokens / max(1, len(outputs)), 2),
        "generate_seconds": round(seconds, 2),
        "questions_per_s": round(len(rows) / seconds, 2) if seconds > 0 else 0.0,
        **guided,
    }


def _execution_guided(cfg: PredictConfig, model: Any, tokenizer: Any, questions: list[tuple[int, str, str]],
                      chosen: list[tuple[str, str]], database_dir: Path) -> dict[str, int]:
    """Replace, in ``chosen`` (``(raw, sql)`` per question), the SQL that fails to execute by the best of
    ``cfg.execution_guided`` beams that executes; return how many failed and how many were replaced.

    Why: a small model's mistakes are often a column its tables do not have or a broken literal; a
    lower beam is often the right query (Wang et al., 2018, execution-guided decoding). Only "runs"
    counts, never the result: the gold answer is not consulted.
    """
    from ..models.generation import generate_sharded
    from ..sql.sandbox import SandboxPool

    # Under torchrun each rank executes a slice of the queries and the beams of a share of the failing
    # questions' batches; the results meet on every rank, so every step sees the one-process lists.
    with SandboxPool(2) as pool:
        mine = distributed.shard_indices(len(questions))
        runs = distributed.all_gather_objects(
            _runs(pool, database_dir, [(questions[n][1], chosen[n][1]) for n in mine], cfg.sql_timeout_s))
        failing = [n for n, ok in enumerate(ok for part in runs for ok in part) if not ok]
        beams = generate_sharded(model, tokenizer, [questions[n][2] for n in failing], batch_size=cfg.batch_size,
                                 max_new_tokens=cfg.max_new_tokens, max_source_length=cfg.max_source_length,
                                 copy_values=cfg.copy_values, num_candidates=cfg.execution_guided,
                                 progress="beams for SQL that failed", everywhere=True)
        assert beams is not None
        share = distributed.shard_indices(len(failing))
        jobs = [(questions[failing[k]][1], c.sql) for k in share for c in beams[k].candidates]
        ran = iter(_runs(pool, database_dir, jobs, cfg.sql_timeout_s))
        picks: dict[int, tuple[str, str]] = {}
        for k in share:
            oks = [next(ran) for _ in beams[k].candidates]
            if True in oks:
                best = beams[k].candidates[oks.index(True)]
                picks[failing[k]] = (best.raw, best.sql)
    gathered = distributed.all_gather_objects(picks)
    for part in gathered:
        for n, pick in part.items():
            chosen[n] = pick
    replaced = sum(len(part) for part in gathered)
    return {"execution_guided_failing": len(failing), "execution_guided_replaced": replaced}


def _runs(pool: Any, database_dir: Path, jobs: list[tuple[str, str]], timeout_s: float) -> list[bool]:
    """Whether each ``(db_id, sql)`` executes without error in the sandbox (the result is not looked at)."""
    results = pool.run([(database_dir / db / f"{db}.sqlite", sql) for db, sql in jobs], timeout_s=timeout_s)
    return [r.ok for r in results]


STAGE = Stage(name="predict", config_cls=PredictConfig, run=run,
              description="Batched SQL generation for the dev set (greedy by default).")
