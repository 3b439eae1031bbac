"""Our DPO loop (Rafailov et al. 2023) on the rm_data step's (gold, wrong SQL) pairs, with LoRA.

Layout: ``policy`` is a :class:`peft.PeftModel` over the SFT causal LM with a fresh LoRA adapter;
``policy.disable_adapter()`` *is* the frozen reference, so no second copy of the network is held.
One :meth:`DPOTrainer.step` takes the next ``batch_size`` pairs (a seeded permutation per epoch, so
the pairs of step ``s`` depend on ``s`` only and a resumed run sees the same ones), scores chosen and
rejected answers in one packed forward pass (:mod:`text2sql_core.rl.packing`: each database's
instruction + schema prefix runs once), computes the reference's log-probs of the same rows under
``torch.no_grad`` with the adapter off, and takes one AdamW step on the sigmoid DPO loss. A sequence's
log-probability is the sum over its answer tokens only: prompt and padding never count.

Why not TRL's ``DPOTrainer``: it is a ``transformers.Trainer``, which writes its own
``checkpoint-N`` folders on local disk and resumes from them, whereas every trainer here publishes
checkpoints through the artifact store (``CheckpointStore``, resumed after a kill -9 of the pod) with
one training-state file (:mod:`text2sql_core.models.checkpoint`); and its collator pads each
prompt + answer row in full, while the packed scoring runs a database's ~450-token shared prompt
prefix once per batch (the answer is ~15 tokens), which is most of the cost on CPU. The loss
(:func:`text2sql_core.rl.losses.dpo_loss`) is TRL's ``sigmoid`` loss; label smoothing makes it
conservative DPO and ``rpo_alpha`` adds RPO's NLL term on the chosen answer.

Under torchrun (:mod:`text2sql_core.distributed`) ``batch_size`` is global: each rank scores its
share of the step's pairs, gradients are averaged over the ranks (the one-process gradient: the
loss is a mean over pairs, the NLL term is normalised by the global batch's chosen tokens), logged
metrics are global means, and the held-out pairs' batches are dealt out to the ranks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ... import distributed
from ..adapter_trainer import AdapterTrainer
from ..losses import dpo_loss, masked_mean, sequence_logprobs
from ..packing import PackedGroup, pack_rows, response_logprobs
from ..rollout import prompt_batch
from .config import DPOConfig

__all__ = ["DPOTrainer", "EncodedPairs"]


# ---------------------------------------------------------------------------- batches


@dataclass
class EncodedPairs:
    """``B`` pairs as ``2B`` scored rows: the chosen answers first, then the rejected ones."""

    pairs: list[dict[str, Any]]
    groups: list[PackedGroup]
    mask: torch.Tensor  # (2B, N) float: answer tokens

    @property
    def size(self) -> int:
        return len(self.pairs)


class DPOTrainer(AdapterTrainer):
    """DPO updates of a LoRA policy whose reference is the same network with the adapter disabled."""

    state_key = "adapter"
    what = "DPO adapter"

    def __init__(self, policy, tokenizer, train_pairs: Sequence[dict[str, Any]], config: DPOConfig, *,
                 eval_pairs: Sequence[dict[str, Any]] = (), judge=None, seed: int = 0) -> None:
        if not train_pairs:
            raise ValueError("DPO needs at least one training pair")
        super().__init__(policy, tokenizer, config, seed=seed)
        self.train_pairs = list(train_pairs)
        self.eval_pairs = list(eval_pairs)
        self.judge = judge
        distributed.split_batch(config.batch_size, "stages.dpo.batch_size", self.world)

    # ------------------------------------------------------------------ pairs

    def batch_for_step(self, step: int) -> list[dict[str, Any]]:
        """This rank's share of the pairs of (0-based) step ``step``: slices of a seeded permutation per epoch
        (the same after a resume, on any number of ranks)."""
        return distributed.shard(prompt_batch(self.train_pairs, step, self.cfg.batch_size, self.seed), self.world)

    def encode(self, pairs: Sequence[dict[str, Any]]) -> EncodedPairs:
        """Tokenize as SFT does (bos + prompt cut from the left, answer + eos) and pack by database."""
        from ...models.batching import encode_examples

        rows = [(p["prompt"], p["chosen"]) for p in pairs] + [(p["prompt"], p["rejected"]) for p in pairs]
        encoded = encode_examples(self.tokenizer, rows, max_source_length=self.cfg.max_source_length,
                                  max_target_length=self.cfg.max_new_tokens)
        answers = [e.input_ids[e.prompt_len:] for e in encoded]
        width = max(len(a) for a in answers)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, a in enumerate(answers):
            ids[i, :len(a)] = torch.tensor(a, dtype=torch.long)
            mask[i, :len(a)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        keys = [p.get("db_id") or p["prompt"] for p in pairs] * 2
        groups = pack_rows([e.input_ids[:e.prompt_len] for e in encoded], ids, mask, keys,
                           self.tokenizer.pad_token_id)
        return EncodedPairs(list(pairs), groups, mask.float())

    def logprobs(self, batch: EncodedPairs, *, reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token ``(2B, N)`` and per-sequence ``(2B,)`` log-probs of the rows, under the policy or the reference."""
        if reference:
            with torch.no_grad(), self.policy.disable_adapter():
                tokens, _ = response_logprobs(self.policy, batch.groups)
        else:
            tokens, _ = response_logprobs(self.policy, batch.groups)
        return tokens, sequence_logprobs(tokens, batch.mask)

    # ------------------------------------------------------------------ optimisation

    def step(self) -> dict[str, Any]:
        """One DPO step on the next batch of pairs; returns (and records) its metrics."""
        cfg = self.cfg
        started = time.monotonic()
        batch = self.encode(self.batch_for_step(self.global_step))
        b = batch.size
        _, ref = self.logprobs(batch, reference=True)
        tokens, seq = self.logprobs(batch)
        out = dpo_loss(seq[:b], seq[b:], ref[:b], ref[b:], beta=cfg.beta, label_smoothing=cfg.label_smoothing)
        loss = out.loss
        record: dict[str, Any] = {}
        if cfg.rpo_alpha > 0:
            if self.world.distributed:  # the mean over the global batch's chosen tokens, this rank's share of it
                chosen = distributed.all_reduce_sum({"tokens": float(batch.mask[:b].sum())})["tokens"]
                nll = -(tokens[:b] * batch.mask[:b]).sum() / max(chosen / self.world.size, 1.0)
            else:
                nll = -masked_mean(tokens[:b], batch.mask[:b])
            loss = loss + cfg.rpo_alpha * nll
            record["nll_chosen"] = float(nll.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.all_reduce_gradients(self.params)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        self.global_step += 1
        margins = out.margins
        means = distributed.all_reduce_mean({
            "loss": float(loss.detach()),
            "dpo_loss": float(out.loss.detach()),
            **record,
            "rewards_chosen": float(out.chosen_rewards.mean()),
            "rewards_rejected": float(out.rejected_rewards.mean()),
            "margin": float(margins.mean()),
            "accuracy": float((margins > 0).float().mean()),
            "logp_chosen": float(seq[:b].detach().mean()),
            "logp_rejected": float(seq[b:].detach().mean()),
        }, weight=float(b))  # global: one value per step
        record = {"step": self.global_step, **means, "grad_norm": float(grad_norm),
                  "seconds": round(time.monotonic() - started, 3)}
        if self.eval_pairs and (self.global_step % cfg.eval_steps == 0 or self.global_step == cfg.max_steps):
            held = self.evaluate_pairs(self.eval_pairs)
            record.update({"eval_accuracy": held["accuracy"], "eval_margin": held["margin"],
                           "eval_logp_accuracy": held["logp_accuracy"]})
        if not all(math.isfinite(v) for v in record.values() if isinstance(v, float)):
            raise FloatingPointError(f"non-finite DPO metrics at step {self.global_step}: {record}")
        self.history.append(record)
        return record

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate_pairs(self, pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Held-out pairwise accuracy: the share of pairs whose implicit reward margin is positive.

        ``accuracy`` (ties count as wrong, so it is 0 for the untrained adapter) is DPO's own figure;
        ``logp_accuracy`` asks whether the policy gives the chosen answer the higher sequence log-prob,
        which is also meaningful for the SFT policy before DPO. Pairs that record their ``origin``
        (``model``, ``perturb:<kind>``) get the accuracy per origin too.
        """
        if not pairs:
            return {"accuracy": float("nan"), "logp_accuracy": float("nan"), "margin": float("nan"), "pairs": 0}
        size = self.cfg.eval_batch_size
        mine = {}  # the batches dealt to this rank (round robin), scored as one process scores them
        for start in range(0, len(pairs), size)[self.world.rank::self.world.size]:
            batch = self.encode(pairs[start:start + size])
            b = batch.size
            _, ref = self.logprobs(batch, reference=True)
            _, seq = self.logprobs(batch)
            out = dpo_loss(seq[:b], seq[b:], ref[:b], ref[b:], beta=self.cfg.beta)
            mine[start] = (out.margins.tolist(), (seq[:b] > seq[b:]).tolist())
        scored = {k: v for part in distributed.all_gather_objects(mine) for k, v in part.items()}
        m = torch.tensor([x for start in sorted(scored) for x in scored[start][0]], dtype=torch.float32)
        logp_right = [x for start in sorted(scored) for x in scored[start][1]]
        right = m > 0
        result: dict[str, Any] = {"accuracy": float(right.float().mean()),
                                  "logp_accuracy": float(np.mean(logp_right)),
                                  "margin": float(m.mean()), "pairs": len(pairs)}
        origins: dict[str, list[bool]] = {}
        for pair, ok in zip(pairs, right.tolist(), strict=True):
            if isinstance(pair.get("origin"), str):
                origins.setdefault(pair["origin"], []).append(ok)
        if origins:
            result["by_origin"] = {k: {"accuracy": sum(v) / len(v), "pairs": len(v)}
                                   for k, v in sorted(origins.items())}
        return result

    @torch.no_grad()
    def evaluate(self, examples: Sequence[Any], batch_size: int = 32) -> dict[str, float]:
        """Greedy answers for ``examples`` (``prompt``, ``db_id``, ``query``), generated as predict does: EX.

        Under torchrun the ranks share the generation batches and every rank gets all the answers.
        """
        from ...models.generation import generate_sharded
        from ..rewards import Verdict

        if self.judge is None:
            raise ValueError("EX evaluation needs an ExecutionJudge")
        generations = generate_sharded(self.policy, self.tokenizer, [e.prompt for e in examples],
                                       batch_size=batch_size, everywhere=True, max_new_tokens=self.cfg.max_new_tokens,
                                       max_source_length=self.cfg.max_source_length, copy_values=self.cfg.copy_values)
        verdicts = self.judge.verdicts([(e.db_id, e.query, g.sql) for e, g in zip(examples, generations,
                                                                                   strict=True)])
        return {"execution_accuracy": float(np.mean([v is Verdict.MATCH for v in verdicts]))}
