"""Our GRPO loop (DeepSeekMath's Group Relative Policy Optimisation) with the sandbox execution reward.

Why not TRL's ``GRPOTrainer`` as it is (we follow its options and names: ``num_generations``,
``scale_rewards``, ``loss_type``, ``epsilon_high``, ``beta``, ``mask_truncated_completions``,
``num_iterations``):

* the reward runs the sampled SQL in our sandbox (:class:`~text2sql_core.sql.sandbox.SandboxPool`:
  watched worker processes, timeouts, row caps) against gold under Spider EX semantics, with the
  judge's cached gold results and a pool that lives as long as the stage; that alone would fit TRL's
  reward-function hook, the next two do not;
* completions are sampled under predict's value-copy constraint and *scored as the constrained policy*
  (the recorded allowed-token masks renormalise the log-probabilities, see
  :mod:`text2sql_core.rl.constrained`); TRL's generation and log-prob paths know nothing of that, so its
  importance ratio and KL would compare a different policy from the one that sampled;
* checkpoints go to the artifact store (``ctx.checkpoints``: atomic, keyed by config hash, kill -9
  safe) with every RNG, so a resumed run sees the same prompts and samples; TRL's ``Trainer``
  checkpoints to a local ``output_dir`` on its own schedule.

One :meth:`GRPOTrainer.step`: the next ``batch_size`` prompts, ``num_generations`` completions each
(rows ``i * G .. i * G + G - 1`` belong to prompt ``i``), the weighted reward terms, group-normalised
advantages (no critic), then ``num_iterations`` passes of the clipped, token-normalised loss (gradients
accumulated over ``mini_batch_size`` chunks, one optimizer step per pass). The policy is the SFT model
with a new LoRA adapter; with ``beta > 0`` the reference is the same model with the adapter disabled.

Each completion is sampled from its own generator, seeded by the run seed, the step and the row's
place in the step's global batch (:class:`~text2sql_core.rl.rollout.SeededRowSampler`), so the
samples of a step do not depend on how its prompts are split into batches or ranks.

Under torchrun (:mod:`text2sql_core.distributed`) ``batch_size`` and ``mini_batch_size`` are global,
as for PPO: each rank samples and scores (its own sandbox) the groups of its share of the step's
prompts, so a group never spans ranks; ``scale_rewards: batch`` divides by the std of the global
batch's rewards; the loss is normalised by the global batch's rows and tokens and gradients are
averaged over the ranks, so each update is the one-process update; logged metrics are global means.
In one process all of this is the identity.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ... import distributed
from ...errors import BadInput
from ...models.generation import encode_prompts
from ..adapter_trainer import AdapterTrainer
from ..losses import group_advantages, grpo_loss
from ..packing import PackedGroup, pack_rows, response_logprobs
from ..rewards import ExecutionJudge, RewardFunctions, Verdict
from ..rollout import PromptExample, decode_responses, prompt_batch, sample_responses, step_row_seeds
from .config import GRPOConfig

if TYPE_CHECKING:  # pragma: no cover
    from ..constrained import TokenConstraints

__all__ = ["GRPOBatch", "GRPOTrainer", "RMScorer"]

#: reward-model scores of (prompt example, SQL) pairs, for an ``rm`` reward term
RMScorer = Callable[[Sequence[PromptExample], Sequence[str]], list[float]]


@dataclass
class GRPOBatch:
    """One generation batch: ``batch_size x G`` completions, ``(rows, N)`` tensors over response positions."""

    examples: list[PromptExample]  # one per row (each prompt repeated G times)
    prompt_tokens: list[list[int]]
    responses: torch.Tensor  # (rows, N) sampled ids, padding after EOS
    mask: torch.Tensor  # (rows, N) float: real response tokens (up to and including EOS)
    loss_mask: torch.Tensor  # (rows, N) float: the tokens the loss counts (truncated rows zeroed when masked)
    texts: list[str]
    rewards: torch.Tensor  # (rows,) weighted sum of the reward terms
    advantages: torch.Tensor  # (rows,)
    old_logprobs: torch.Tensor | None  # sampling policy's log-probs (num_iterations > 1)
    ref_logprobs: torch.Tensor | None  # reference's (beta > 0)
    constraints: TokenConstraints | None = None
    stats: dict[str, float] = field(default_factory=dict)


class GRPOTrainer(AdapterTrainer):
    """GRPO updates of a policy's LoRA adapter from groups of sampled, executed completions."""

    state_key = "policy"
    what = "policy"

    def __init__(self, policy, tokenizer, examples: Sequence[PromptExample], config: GRPOConfig, *,
                 judge: ExecutionJudge | None, rm_scorer: RMScorer | None = None, seed: int = 0,
                 on_log: Callable[[dict[str, Any]], None] | None = None) -> None:
        if not examples:
            raise BadInput("GRPO needs at least one training prompt: the prepared train split is empty or "
                           "`train_prompts` cut it to nothing", field="stages.grpo.train_prompts")
        super().__init__(policy, tokenizer, config, seed=seed)
        self.examples = list(examples)
        self.judge = judge
        self.rewards = RewardFunctions(config.rewards, judge)
        if self.rewards.needs_rm and rm_scorer is None:
            raise ValueError("an `rm` reward term needs the reward model's scorer")
        self.rm_scorer = rm_scorer
        self.on_log = on_log
        distributed.split_batch(config.batch_size, "stages.grpo.batch_size", self.world)
        if config.mini_batch_size:
            distributed.split_batch(config.mini_batch_size, "stages.grpo.mini_batch_size", self.world)

    # ------------------------------------------------------------------ prompts

    def batch_for_step(self, step: int) -> list[PromptExample]:
        """This rank's share of the prompts of step ``step`` (a seeded permutation per epoch: a resumed run
        sees the same ones, on any number of ranks)."""
        return distributed.shard(prompt_batch(self.examples, step, self.cfg.batch_size, self.seed), self.world)

    def row_seeds(self, rows: int, step: int | None = None) -> list[int]:
        """The sampling seeds of this rank's ``rows`` completions of ``step``: by place in the global batch."""
        step = self.global_step if step is None else step
        return step_row_seeds(self.seed, step, self.cfg.batch_size, rows, self.world, self.cfg.num_generations)

    def score(self, examples: Sequence[PromptExample], texts: Sequence[str]) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted reward terms of each completion, and each term's mean."""
        rm_scores = self.rm_scorer(examples, texts) if self.rewards.needs_rm and self.rm_scorer else None
        totals, stats = self.rewards.score([(e.db_id, e.query, t) for e, t in zip(examples, texts, strict=True)],
                                           rm_scores)
        return torch.tensor(totals, dtype=torch.float32), stats

    # ------------------------------------------------------------------ generation

    def _pack(self, batch: GRPOBatch, rows: Sequence[int]) -> list[PackedGroup]:
        index = torch.tensor(list(rows), device=batch.responses.device)
        return pack_rows([batch.prompt_tokens[i] for i in rows], batch.responses.index_select(0, index),
                         batch.mask.index_select(0, index), [batch.examples[i].db_id for i in rows],
                         self.tokenizer.pad_token_id)

    def _chunks(self, size: int) -> list[list[int]]:
        # a global mini-batch is every rank's equal share of it
        mini = min(self.cfg.mini_batch_size // self.world.size if self.cfg.mini_batch_size else size, size)
        return [list(range(s, min(s + mini, size))) for s in range(0, size, mini)]

    def _constraints(self, batch: GRPOBatch, rows: Sequence[int]) -> TokenConstraints | None:
        return batch.constraints.select(list(rows)) if batch.constraints is not None else None

    @torch.no_grad()
    def _logprobs(self, batch: GRPOBatch) -> torch.Tensor:
        parts = []
        for rows in self._chunks(len(batch.examples)):
            lp, _ = response_logprobs(self.policy, self._pack(batch, rows), self.cfg.temperature,
                                      constraints=self._constraints(batch, rows))
            parts.append(lp)
        return torch.cat(parts, dim=0)

    @torch.no_grad()
    def generate(self, prompts: Sequence[PromptExample]) -> GRPOBatch:
        """Sample G completions per prompt, score them, and turn the rewards into group advantages."""
        cfg = self.cfg
        tok = self.tokenizer
        g = cfg.num_generations
        examples = [e for e in prompts for _ in range(g)]
        enc = encode_prompts(tok, [e.prompt for e in examples], cfg.max_source_length, self.device)
        self.policy.eval()
        responses, response_mask, constraints = sample_responses(
            self.policy, tok, enc["input_ids"], enc["attention_mask"], max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature, top_p=cfg.top_p,
            copy_from=[e.prompt for e in examples] if cfg.copy_values else None,
            row_seeds=self.row_seeds(len(examples)))
        prompt_tokens = [row[m.bool()].tolist() for row, m in zip(enc["input_ids"], enc["attention_mask"],
                                                                   strict=True)]
        texts = decode_responses(tok, responses, response_mask)
        rewards, stats = self.score(examples, texts)
        batch_std = None
        if cfg.scale_rewards == "batch" and self.world.distributed:  # the std of the global batch, exactly
            every = torch.tensor([r for part in distributed.all_gather_objects(rewards.tolist()) for r in part])
            batch_std = every.std() if every.numel() > 1 else every.new_zeros(())
        advantages, zero_std = group_advantages(rewards, g, cfg.scale_rewards, batch_std=batch_std)
        fmask = response_mask.float()
        truncated = ~((responses == tok.eos_token_id) & response_mask.bool()).any(dim=1)
        loss_mask = fmask * (~truncated).float().unsqueeze(1) if cfg.mask_truncated_completions else fmask
        grouped = rewards.view(-1, g)
        stats.update({
            "reward": float(rewards.mean()),
            "reward_std": float(grouped.std(dim=1).mean()),
            "frac_reward_zero_std": float(zero_std.float().mean()),
            "completion_length": float(fmask.sum(1).mean()),
            "truncated_fraction": float(truncated.float().mean()),
        })
        stats = distributed.all_reduce_mean(stats, weight=float(len(examples)))  # global: one value per step
        batch = GRPOBatch(examples, prompt_tokens, responses, fmask, loss_mask, texts, rewards,
                          advantages.to(self.device), None, None, constraints, stats)
        if cfg.num_iterations > 1:
            batch.old_logprobs = self._logprobs(batch)
        if cfg.beta > 0:
            with self.policy.disable_adapter():
                batch.ref_logprobs = self._logprobs(batch)
        return batch

    # ------------------------------------------------------------------ optimisation

    def train_on(self, batch: GRPOBatch) -> dict[str, float]:
        """``num_iterations`` optimizer steps on ``batch``, each accumulating the chunks' gradients."""
        cfg = self.cfg
        rows_total = len(batch.examples)
        # the global batch's counted tokens, and each rank's equal share of rows and tokens as the loss's
        # normaliser: averaged over the ranks, the gradients are the one-process gradient
        tokens_total = distributed.all_reduce_sum({"tokens": float(batch.loss_mask.sum())})["tokens"]
        tokens_share = tokens_total / self.world.size
        sums: dict[str, list[float]] = {k: [] for k in ("policy_loss", "clip_low", "clip_high", "kl", "entropy")}
        self.policy.train()
        for _ in range(cfg.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum = 0.0
            parts: dict[str, float] = {"clip_low": 0.0, "clip_high": 0.0, "kl": 0.0, "entropy": 0.0}
            for rows in self._chunks(rows_total):
                index = torch.tensor(rows, device=batch.responses.device)
                m = batch.loss_mask.index_select(0, index)
                logprobs, entropy = response_logprobs(self.policy, self._pack(batch, rows), cfg.temperature,
                                                      with_entropy=True, constraints=self._constraints(batch, rows))
                old = (batch.old_logprobs.index_select(0, index) if batch.old_logprobs is not None
                       else logprobs.detach())
                ref = batch.ref_logprobs.index_select(0, index) if batch.ref_logprobs is not None else None
                out = grpo_loss(logprobs, old, batch.advantages.index_select(0, index), m, loss_type=cfg.loss_type,
                                epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, max_new_tokens=cfg.max_new_tokens,
                                beta=cfg.beta, ref_logprobs=ref, total_rows=rows_total, total_tokens=tokens_share)
                out.loss.backward()
                loss_sum += float(out.loss.detach())
                share = float(m.sum()) / max(tokens_total, 1.0)  # token-weighted means over the chunks
                parts["clip_low"] += float(out.clip_low) * share
                parts["clip_high"] += float(out.clip_high) * share
                parts["kl"] += float(out.kl) * share
                parts["entropy"] += float((entropy.detach() * m).sum()) / max(tokens_total, 1.0)
            distributed.all_reduce_gradients(self.params)
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            self.optimizer.step()
            sums["policy_loss"].append(loss_sum)
            for key, value in parts.items():
                sums[key].append(value)
        self.policy.eval()
        stats = {k: float(np.mean(v)) for k, v in sums.items()}
        # token shares add up over the ranks; each rank's loss is its share scaled by the world size
        stats = distributed.all_reduce_sum({**stats, "policy_loss": stats["policy_loss"] / self.world.size})
        if cfg.beta == 0:
            del stats["kl"]  # no reference was run: there is no KL to report
        return stats

    def step(self) -> dict[str, Any]:
        """One GRPO step on the next prompts; returns (and records) its metrics."""
        started = time.monotonic()
        batch = self.generate(self.batch_for_step(self.global_step))
        train_stats = self.train_on(batch)
        self.global_step += 1
        record = {"step": self.global_step, **batch.stats, **train_stats,
                  "seconds": round(time.monotonic() - started, 3)}
        if not all(math.isfinite(v) for v in record.values() if isinstance(v, float)):
            raise FloatingPointError(f"non-finite GRPO metrics at step {self.global_step}: {record}")
        self.history.append(record)
        if self.on_log is not None:
            self.on_log(record)
        return record

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, examples: Sequence[PromptExample], batch_size: int = 32) -> dict[str, float]:
        """Greedy answers for ``examples``, generated as ``predict`` does: mean reward and execution accuracy.

        Under torchrun the ranks share the generation batches and every rank gets all the answers
        (the one-process answers, byte for byte), so each scores the same and reports the same.
        """
        from ...models.generation import generate_sharded

        generations = generate_sharded(self.policy, self.tokenizer, [e.prompt for e in examples],
                                       batch_size=batch_size, everywhere=True, max_new_tokens=self.cfg.max_new_tokens,
                                       max_source_length=self.cfg.max_source_length, copy_values=self.cfg.copy_values)
        rewards, stats = self.score(examples, [g.sql for g in generations])
        out = {"reward": float(rewards.mean()), **{k: v for k, v in stats.items() if k.startswith("reward_")}}
        if "exec_match" not in stats and self.judge is not None:  # an rm-only reward: EX is still the measure
            verdicts = self.judge.verdicts([(e.db_id, e.query, g.sql) for e, g in zip(examples, generations,
                                                                                      strict=True)])
            stats["exec_match"] = float(np.mean([v is Verdict.MATCH for v in verdicts]))
        if "exec_match" in stats:
            out["execution_accuracy"] = stats["exec_match"]
        return out
