"""The ``rm_data`` stage: preference pairs (chosen = gold SQL, rejected = a wrong SQL) for the reward model.

For every training prompt the SFT policy samples ``num_candidates`` SQL queries; each one runs in the
SQL sandbox and those whose result differs from the gold result (Spider EX semantics; a query that
does not run counts as wrong) become *rejected* answers, deduplicated by normalised SQL. Where the
model produced no wrong candidate, execution-verified perturbations of the gold query (swap a column,
flip a comparison, drop a condition, change an aggregate, ORDER direction, LIMIT, table) fill in.

Published files:

* ``train_pairs.jsonl`` / ``eval_pairs.jsonl``: ``{prompt, chosen, rejected, origin, index, db_id}``
  (``rm_record`` of the reference example plus where the pair came from: ``model`` or
  ``perturb:<kind>``); the split is by prompt, so no held-out prompt is ever trained on;
* ``stats.json``: counts by origin and how many prompts got no pair.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from .. import distributed
from ..data.jsonl import read_numbered_records
from ..errors import BadInput
from ..rl.perturbation_kinds import PERTURBATION_KINDS  # not rl.perturb: sqlglot loads in 0.2 s
from .base import Stage, StageConfigBase, StageContext

__all__ = ["STAGE", "RMDataConfig", "run"]


class RMDataConfig(StageConfigBase):
    """Pair-mining settings: how many candidates to sample, how many pairs to keep, the held-out share."""

    # Sampling from the SFT policy
    num_candidates: int = Field(8, ge=0, description="SQL candidates sampled per training prompt (k); 0 uses "
                                                     "perturbations only.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature for the candidates.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass for the candidates.")
    copy_values: bool = Field(False, description="Sample with predict's value-copy constraint (quoted values and "
                                                 "compared numbers come from the question), so the rejected answers "
                                                 "are the mistakes the policy still makes when it decodes that way.")
    max_new_tokens: int = Field(128, ge=1, description="Longest candidate SQL, in tokens.")
    max_source_length: int = Field(1024, ge=8, description="Prompt tokens kept (the beginning is cut first).")
    batch_size: int = Field(8, ge=1, description="Prompts sampled together (each yields num_candidates).")
    # Pairs
    max_pairs_per_prompt: int = Field(2, ge=1, description="Rejected answers kept per prompt (distinct SQL).")
    perturbations_per_prompt: int = Field(2, ge=0, description="Verified perturbations used for a prompt where "
                                                               "the model made no wrong candidate.")
    perturbation_kinds: list[str] = Field(default_factory=lambda: list(PERTURBATION_KINDS),
                                          description=f"Perturbation kinds allowed: {', '.join(PERTURBATION_KINDS)}.")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Share of prompts whose pairs are held out "
                                                              "(eval_pairs.jsonl) for the RM's pairwise accuracy.")
    limit: int | None = Field(None, ge=1, description="Mine pairs for the first N training prompts only.")
    # Sandbox
    sql_timeout_s: float = Field(5.0, gt=0, description="Per-query execution timeout in the SQL sandbox.")
    row_cap: int = Field(10_000, ge=1, description="Results with more rows count as errors (runaway joins).")
    sandbox_processes: int = Field(2, ge=1, description="Sandbox worker processes executing sampled SQL.")
    num_threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: all cores.")

    @field_validator("perturbation_kinds")
    @classmethod
    def _known_kinds(cls, value: list[str]) -> list[str]:
        unknown = [k for k in value if k not in PERTURBATION_KINDS]
        if unknown:
            raise ValueError(f"unknown perturbation kind(s) {unknown}; use any of {list(PERTURBATION_KINDS)}")
        return value


def read_prompts(prepare_dir: Path, split: str = "train") -> list[dict[str, Any]]:
    """``{prompt, output, index, db_id, question, query}`` per example of a prepared split.

    ``<split>_flat.jsonl`` and ``<split>_meta.jsonl`` are aligned line by line; a mismatch is a bad
    upstream artifact and names the file and line.
    """
    flat_path = prepare_dir / f"{split}_flat.jsonl"
    meta_path = prepare_dir / f"{split}_meta.jsonl"
    missing = "missing from the prepare step's artifacts"
    flats = read_numbered_records(flat_path, missing=missing)
    metas = read_numbered_records(meta_path, missing=missing)
    if len(flats) != len(metas):
        raise BadInput(f"has {len(flats)} rows but {meta_path.name} has {len(metas)}; they must align",
                       uri=str(flat_path))
    rows = []
    for i, ((f_line, flat), (m_line, meta)) in enumerate(zip(flats, metas, strict=True)):
        for rec, path, line, fields in ((flat, flat_path, f_line, ("prompt", "output")),
                                        (meta, meta_path, m_line, ("db_id", "query"))):
            for f in fields:
                if not isinstance(rec.get(f), str) or not rec[f].strip():
                    raise BadInput("missing or empty", uri=str(path), record=f"line {line}", field=f)
        rows.append({"prompt": flat["prompt"], "output": flat["output"], "index": meta.get("index", i),
                     "db_id": meta["db_id"], "question": meta.get("question", ""), "query": meta["query"]})
    return rows


def _sample_candidates(ctx: StageContext, rows: list[dict[str, Any]]) -> list[list[str]] | None:
    """``num_candidates`` sampled SQL strings per prompt from the SFT policy, cleaned as ``predict`` cleans.

    Under torchrun the ranks sample a share of the batches each (every batch reseeded from the run
    seed, so the samples do not depend on the number of ranks) and rank 0 gets them all, in prompt
    order; the other ranks get ``None``.
    """
    from ..models.generation import generate_sharded
    from ..models.loading import load_policy_from_step

    cfg: RMDataConfig = ctx.config
    k = cfg.num_candidates
    model, tokenizer = load_policy_from_step(ctx, "sft")
    prompts = [r["prompt"] for r in rows for _ in range(k)]
    generations = generate_sharded(model, tokenizer, prompts, batch_size=cfg.batch_size * k,
                                   max_new_tokens=cfg.max_new_tokens, max_source_length=cfg.max_source_length,
                                   do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                                   copy_values=cfg.copy_values, progress="rm_data: sampling",
                                   seed=ctx.run_config.seed,
                                   on_batch=lambda done, total: ctx.progress(step=done // k, total=total // k))
    if generations is None:
        return None
    return [[g.sql for g in generations[i * k:(i + 1) * k]] for i in range(len(rows))]


def _interleave_kinds(found: list, rng: random.Random) -> list:
    """Round-robin over the kinds (in a seeded order), so a prompt's few negatives are different mistakes."""
    by_kind: dict[str, list] = {}
    for p in found:
        by_kind.setdefault(p.kind, []).append(p)
    kinds = list(by_kind)
    rng.shuffle(kinds)
    out = []
    while any(by_kind[k] for k in kinds):
        out.extend(by_kind[k].pop(0) for k in kinds if by_kind[k])
    return out


def mine_pairs(rows: list[dict[str, Any]], candidates: list[list[str]], judge, cfg: RMDataConfig, seed: int
               ) -> tuple[list[dict[str, Any]], Counter]:
    """Preference pairs for every prompt: wrong model samples first, verified perturbations as fallback.

    Returns the pairs (each with ``origin``) and counters for the stage's metrics.
    """
    from ..models.generation import EMPTY_PREDICTION
    from ..rl.perturb import normalize_sql, perturbations, schema_from_sqlite, verified_perturbations
    from ..rl.rewards import Verdict

    counts: Counter = Counter()
    schemas: dict[str, dict[str, list[str]]] = {}
    rng = random.Random(seed)
    jobs = [(r["db_id"], r["query"], c) for r, cands in zip(rows, candidates, strict=True) for c in cands]
    verdicts = iter(judge.verdicts(jobs)) if jobs else iter(())
    pairs: list[dict[str, Any]] = []
    for row, cands in zip(rows, candidates, strict=True):
        gold = judge.gold_result(row["db_id"], row["query"])
        row_verdicts = [next(verdicts) for _ in cands]
        if not gold.ok:
            counts["gold_errors"] += 1
            continue
        counts["samples"] += len(cands)
        counts["samples_correct"] += sum(v is Verdict.MATCH for v in row_verdicts)
        seen = {normalize_sql(row["query"])}
        wrong: list[str] = []
        for sql, verdict in zip(cands, row_verdicts, strict=True):
            key = normalize_sql(sql)
            if verdict is Verdict.MATCH or not sql.strip() or sql == EMPTY_PREDICTION or key in seen:
                continue
            seen.add(key)
            wrong.append(sql)
        if len(wrong) > cfg.max_pairs_per_prompt:  # a seeded sample keeps the mix of mistakes the model makes
            wrong = rng.sample(wrong, cfg.max_pairs_per_prompt)
        chosen = [(sql, "model") for sql in wrong]
        if not chosen and cfg.perturbations_per_prompt:
            db = row["db_id"]
            if db not in schemas:
                schemas[db] = schema_from_sqlite(judge.db_path(db))
            found = _interleave_kinds(
                perturbations(row["query"], schemas[db], kinds=cfg.perturbation_kinds, max_per_kind=3, rng=rng), rng)
            kept = verified_perturbations(
                found, lambda sql, db=db, gold=row["query"]: judge.verdict(db, gold, sql) is Verdict.MISMATCH,
                limit=cfg.perturbations_per_prompt)
            chosen = [(p.sql, f"perturb:{p.kind}") for p in kept]
        if not chosen:
            counts["prompts_without_pair"] += 1
        for sql, origin in chosen:
            counts[origin] += 1
            pairs.append({"prompt": row["prompt"], "chosen": row["output"], "rejected": sql, "origin": origin,
                          "index": row["index"], "db_id": row["db_id"]})
    return pairs, counts


def split_by_prompt(pairs: list[dict[str, Any]], eval_fraction: float, seed: int
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out every pair of a seeded ``eval_fraction`` of the prompts (never a prompt split across both)."""
    prompts = sorted({p["index"] for p in pairs})
    random.Random(seed).shuffle(prompts)
    n_eval = round(len(prompts) * eval_fraction)
    if eval_fraction > 0 and len(prompts) > 1:
        n_eval = max(1, n_eval)
    held = set(prompts[:n_eval])
    return [p for p in pairs if p["index"] not in held], [p for p in pairs if p["index"] in held]


def run(ctx: StageContext) -> dict[str, Any]:
    from ..data.dataset import jsonl_text, write_files_atomically
    from ..rl.rewards import ExecutionJudge
    from ..sql.sandbox import SandboxPool

    cfg: RMDataConfig = ctx.config
    prepared = ctx.input("prepare")
    rows = read_prompts(prepared, "train")
    if cfg.limit is not None:
        rows = rows[:cfg.limit]
    if cfg.num_threads:
        import torch

        torch.set_num_threads(cfg.num_threads)
    candidates = _sample_candidates(ctx, rows) if cfg.num_candidates else [[] for _ in rows]
    if not distributed.world().is_main or candidates is None:  # rank 0 mines and publishes
        return {}
    with SandboxPool(cfg.sandbox_processes) as pool:
        judge = ExecutionJudge(prepared / "database", timeout_s=cfg.sql_timeout_s, row_cap=cfg.row_cap, pool=pool)
        pairs, counts = mine_pairs(rows, candidates, judge, cfg, ctx.run_config.seed)
    if not pairs:
        raise BadInput(f"no preference pair could be mined from {len(rows)} training prompts (every sample "
                       "was correct and no perturbation changed the result)", stage=ctx.step.name)
    train, held_out = split_by_prompt(pairs, cfg.eval_fraction, ctx.run_config.seed)
    origins = {k: v for k, v in sorted(counts.items()) if k == "model" or k.startswith("perturb:")}
    stats = {
        "prompts": len(rows),
        "pairs": len(pairs),
        "train_pairs": len(train),
        "eval_pairs": len(held_out),
        "prompts_without_pair": counts["prompts_without_pair"],
        "gold_errors": counts["gold_errors"],
        "sample_accuracy": round(counts["samples_correct"] / counts["samples"], 4) if counts["samples"] else 0.0,
        "origins": origins,
    }
    out = ctx.output_dir
    write_files_atomically({
        out / "train_pairs.jsonl": jsonl_text(train),
        out / "eval_pairs.jsonl": jsonl_text(held_out),
        out / "stats.json": json.dumps(stats, indent=2) + "\n",
    })
    ctx.log.info("pairs mined", **{k: v for k, v in stats.items() if k != "origins"}, **origins)
    metrics = {k: v for k, v in stats.items() if k != "origins"}
    metrics.update({f"pairs_{k.replace(':', '_')}": v for k, v in origins.items()})
    return metrics


STAGE = Stage(name="rm_data", config_cls=RMDataConfig, run=run,
              description="Mine (gold, wrong SQL) preference pairs from SFT samples and perturbations.")
