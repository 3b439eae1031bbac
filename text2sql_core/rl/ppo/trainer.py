"""Our PPO loop for RLHF of a causal LM.

TRL moved its PPOTrainer to ``trl.experimental.ppo`` (huggingface/trl#4482) and later deleted it (#7020),
so the loop is ours.

Layout, after InstructGPT and DeepSpeed-Chat step 3, with PEFT adapters so no network is held twice:

* ``actor``: a :class:`peft.PeftModel` over the SFT causal LM; ``actor.disable_adapter()`` *is* the
  frozen reference policy;
* ``critic``: a :class:`peft.PeftModel` over the reward model (a one-label sequence classifier) whose
  score head is trainable (``modules_to_save``); its head read at every position is the value, and
  ``critic.disable_adapter()`` *is* the frozen reward model.

One :meth:`PPOTrainer.step`: take the next ``batch_size`` training prompts (a seeded permutation per
epoch, so the prompts of step ``s`` depend on ``s`` only and a resumed run sees the same ones), sample one
response each, score them (RM / execution / hybrid), turn the scores into per-token rewards with a KL
penalty against the reference, run GAE and ``ppo_epochs`` passes of clipped policy and value updates
over mini-batches. All tensors of a rollout are ``(batch, response_length)``: position ``i`` is the
``i``-th response token, ``mask`` marks real tokens (up to and including EOS), padding is masked out.

Under torchrun (:mod:`text2sql_core.distributed`) ``batch_size`` and ``mini_batch_size`` are global:
each rank rolls out and scores its share of the step's prompts, each response sampled from its own
generator seeded by the run seed, the step and the row's place in the global batch
(:class:`~text2sql_core.rl.rollout.SeededRowSampler`, as GRPO samples), so the rollouts are those of
one process; advantages are whitened with the
statistics of all ranks, actor and critic gradients are averaged over the ranks, and the logged
metrics are global means. In one process all of this is the identity.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ... import distributed
from ...errors import BadInput
from ...models.checkpoint import (
    load_trainable_state,
    load_training_state,
    restore_rng,
    rng_state,
    save_training_state,
    trainable_state,
)
from ...models.generation import encode_prompts
from ..losses import (
    compute_gae,
    last_token_index,
    masked_mean,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)
from ..packing import PackedGroup, head_outputs, pack_rows, response_logprobs
from ..rewards import ExecutionJudge, RewardFunctions, Verdict, terms_for_mode
from ..rollout import PromptExample, decode_responses, prompt_batch, sample_responses, step_row_seeds
from .config import PPOConfig

if TYPE_CHECKING:  # pragma: no cover
    from ..constrained import TokenConstraints

__all__ = ["PPOTrainer", "Rollout"]


def _whiten_over_ranks(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """:func:`masked_whiten` with the mean and (Bessel-corrected) variance of every rank's masked values."""
    if not distributed.world().distributed:
        return masked_whiten(values, mask, eps=eps)
    m = mask.to(values.dtype)
    total = distributed.all_reduce_sum({"n": float(m.sum()), "sum": float((values * m).sum()),
                                        "squares": float((values.pow(2) * m).sum())})
    n = max(total["n"], 1.0)
    mean = total["sum"] / n
    var = max(total["squares"] / n - mean * mean, 0.0)
    if n > 1:
        var *= n / (n - 1)
    return (values - mean) * (var + eps) ** -0.5 * m

@dataclass
class Rollout:
    """One batch of experience: ``(B, N)`` tensors over the response positions."""

    examples: list[PromptExample]
    prompt_tokens: list[list[int]]  # each row's prompt as sampled from (bos included, no padding)
    responses: torch.Tensor  # (B, N) sampled token ids, padding after EOS
    mask: torch.Tensor  # (B, N) float: real response tokens
    texts: list[str]  # the SQL of each response (cleaned as predict cleans it)
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor  # (B,) sequence reward before clipping
    rewards: torch.Tensor  # (B, N) per-token: -beta * KL, plus the clipped score at the last token
    kl: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)
    constraints: TokenConstraints | None = None  # where sampling was constrained (``copy_values``)


class PPOTrainer:
    """Rollouts and PPO updates for an actor/critic pair sharing weights with reference and reward model."""

    def __init__(self, actor, critic, tokenizer, examples: Sequence[PromptExample], config: PPOConfig, *,
                 judge: ExecutionJudge | None = None, seed: int = 0,
                 on_log: Callable[[dict[str, Any]], None] | None = None,
                 deepspeed_config: dict[str, Any] | None = None) -> None:
        if not examples:
            raise BadInput("PPO needs at least one training prompt: the prepared train split is empty or "
                           "`train_prompts` cut it to nothing", field="stages.ppo.train_prompts")
        self.actor = actor
        self.critic = critic
        self.tokenizer = tokenizer
        self.examples = list(examples)
        self.cfg = config
        self.judge = judge
        self.seed = seed
        self.on_log = on_log
        self.global_step = 0
        self.world = distributed.world()
        distributed.split_batch(config.batch_size, "ppo.batch_size", self.world)
        if config.mini_batch_size:
            distributed.split_batch(config.mini_batch_size, "ppo.mini_batch_size", self.world)
        if config.reward.mode in ("execution", "hybrid") and judge is None:
            raise ValueError(f"reward mode `{config.reward.mode}` needs an ExecutionJudge")
        rc = config.reward
        self.rewards = RewardFunctions(terms_for_mode(rc.mode, execution_weight=rc.execution_weight, match=rc.match,
                                                      mismatch=rc.mismatch, error=rc.error), judge)
        self.actor_params = [p for p in actor.parameters() if p.requires_grad]
        self.critic_params = [p for p in critic.parameters() if p.requires_grad]
        if not self.actor_params or not self.critic_params:
            raise ValueError("actor and critic need trainable (adapter) parameters")
        self.actor_opt = torch.optim.AdamW(self.actor_params, lr=config.actor_learning_rate,
                                           weight_decay=config.weight_decay)
        self.critic_opt = torch.optim.AdamW(self.critic_params, lr=config.critic_learning_rate,
                                            weight_decay=config.weight_decay)
        self.device = next(actor.parameters()).device
        self.actor_engine = self.critic_engine = None
        self.zero3 = False
        if deepspeed_config is not None:
            self._init_deepspeed(deepspeed_config)
        self.ema: dict[str, torch.Tensor] | None = None
        if config.ema:
            self.ema = {n: p.detach().clone() for n, p in actor.named_parameters() if p.requires_grad}
        self.history: list[dict[str, Any]] = []

    def _init_deepspeed(self, ds_config: dict[str, Any]) -> None:
        """Wrap actor and critic in DeepSpeed engines (ZeRO-1/2/3) that own backward and optimizer steps.

        The reference policy and the reward model stay the same networks with adapters disabled; under
        ZeRO-3 generation and publishing gather the partitioned weights first.
        """
        import deepspeed

        self.zero3 = ds_config.get("zero_optimization", {}).get("stage", 0) == 3
        self.actor_engine, self.actor_opt, _, _ = deepspeed.initialize(
            model=self.actor, optimizer=self.actor_opt, config=json.loads(json.dumps(ds_config)))
        self.critic_engine, self.critic_opt, _, _ = deepspeed.initialize(
            model=self.critic, optimizer=self.critic_opt, config=json.loads(json.dumps(ds_config)))
        self.device = self.actor_engine.device

    def _gathered(self):
        """All of the actor's weights in place (ZeRO-3 partitions them); a no-op otherwise."""
        if not self.zero3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.actor.parameters()))

    def _optimise(self, loss: torch.Tensor, engine, optimizer, params: list[torch.Tensor]) -> None:
        if engine is not None:  # DeepSpeed clips (gradient_clipping) and zeroes the gradients itself
            engine.backward(loss)
            engine.step()
            return
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.all_reduce_gradients(params)  # the ranks' mini-batch shares make one global mini-batch
        torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        optimizer.step()

    # ------------------------------------------------------------------ prompts

    def batch_for_step(self, step: int) -> list[PromptExample]:
        """This rank's share of the prompts of PPO step ``step`` (the shared seeded plan: a resume sees the
        same ones, on any number of ranks)."""
        return distributed.shard(prompt_batch(self.examples, step, self.cfg.batch_size, self.seed), self.world)

    # ------------------------------------------------------------------ scoring

    def pack(self, prompt_tokens: Sequence[Sequence[int]], responses: torch.Tensor, mask: torch.Tensor,
             examples: Sequence[PromptExample]) -> list[PackedGroup]:
        """Rows grouped by database, so each group runs its instruction + schema prefix once."""
        return pack_rows(prompt_tokens, responses, mask, [e.db_id for e in examples], self.tokenizer.pad_token_id)

    def sequence_scores(self, examples: Sequence[PromptExample], texts: Sequence[str],
                        groups: list[PackedGroup] | None = None, last: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, dict[str, float]]:
        """Sequence-level reward of each response for ``reward.mode``, plus what it was made of.

        The RM score is the frozen reward model (the critic with its adapter off) at each row's last
        response token ``last``; the execution reward runs the cleaned SQL ``texts`` against gold.
        """
        rm_scores = None
        if self.rewards.needs_rm:
            assert groups is not None and last is not None
            with torch.no_grad(), self.critic.disable_adapter():
                heads = head_outputs(self.critic, groups)
            rm_scores = heads[torch.arange(heads.shape[0], device=heads.device), last + 1].tolist()
        scores, stats = self.rewards.score([(e.db_id, e.query, t) for e, t in zip(examples, texts, strict=True)],
                                           rm_scores)
        return torch.tensor(scores, dtype=torch.float32, device=self.device), stats

    # ------------------------------------------------------------------ experience

    @torch.no_grad()
    def rollout(self, examples: Sequence[PromptExample]) -> Rollout:
        cfg = self.cfg
        tok = self.tokenizer
        enc = encode_prompts(tok, [e.prompt for e in examples], cfg.max_source_length, self.device)
        with self._gathered():
            responses, mask, constraints = sample_responses(
                self.actor, tok, enc["input_ids"], enc["attention_mask"], max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature, top_p=cfg.top_p,
                copy_from=[e.prompt for e in examples] if cfg.copy_values else None,
                row_seeds=step_row_seeds(self.seed, self.global_step, cfg.batch_size, len(examples), self.world))
        prompt_tokens = [row[m.bool()].tolist() for row, m in zip(enc["input_ids"], enc["attention_mask"],
                                                                   strict=True)]
        fmask = mask.float()
        texts = decode_responses(tok, responses, mask)
        groups = self.pack(prompt_tokens, responses, mask, examples)

        old_logprobs, _ = response_logprobs(self.actor, groups, cfg.temperature, constraints=constraints)
        with self.actor.disable_adapter():
            ref_logprobs, _ = response_logprobs(self.actor, groups, cfg.temperature, constraints=constraints)
        values = head_outputs(self.critic, groups)[:, :-1] * fmask  # V(state before response token i)
        last = last_token_index(mask)
        scores, stats = self.sequence_scores(examples, texts, groups, last)

        rewards, kl = token_rewards(scores, old_logprobs, ref_logprobs, fmask, cfg.kl_coef,
                                    clip_score=cfg.reward.clip, kl_kind=cfg.kl_estimator)
        advantages, returns = compute_gae(values, rewards, fmask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = _whiten_over_ranks(advantages, fmask)
        stats.update({
            "reward": float(scores.mean()),
            "kl": float((kl * fmask).sum(1).mean()),
            "response_length": float(fmask.sum(1).mean()),
            # a token mean: scaled to this rank's share, so the mean over the ranks is the global one
            "value_mean": float(masked_mean(values, fmask)) * distributed.token_share(float(fmask.sum()), self.world),
        })
        stats = distributed.all_reduce_mean(stats, weight=float(len(examples)))  # global: one value per step
        return Rollout(list(examples), prompt_tokens, responses, fmask, texts, old_logprobs, ref_logprobs, values,
                       scores, rewards, kl, advantages, returns, stats, constraints)

    # ------------------------------------------------------------------ optimisation

    def train_on(self, ro: Rollout) -> dict[str, float]:
        """``ppo_epochs`` passes of clipped policy and value updates over mini-batches of ``ro``."""
        cfg = self.cfg
        size = ro.responses.shape[0]
        # a global mini-batch is every rank's equal share of it
        mini = min(cfg.mini_batch_size // self.world.size if cfg.mini_batch_size else size, size)
        batches = []
        for start in range(0, size, mini):
            rows = list(range(start, min(start + mini, size)))
            index = torch.tensor(rows, device=ro.responses.device)
            m = ro.mask.index_select(0, index)
            groups = self.pack([ro.prompt_tokens[i] for i in rows], ro.responses.index_select(0, index), m,
                               [ro.examples[i] for i in rows])
            # the losses are token means: each rank's carries its share of the global mini-batch's tokens, so
            # the gradients averaged over the ranks (and the logged means) are the one-process ones
            share = distributed.token_share(float(m.sum()), self.world)
            batches.append((index, m, groups, ro.constraints.select(rows) if ro.constraints is not None else None,
                            share))
        sums: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "entropy", "clip_fraction",
                                                         "value_clip_fraction", "approx_kl")}
        self.actor.train()
        self.critic.train()
        train_actor = self.global_step >= cfg.critic_warmup_steps  # during critic warm-up: stats only, no graph
        for _ in range(cfg.ppo_epochs):
            for index, m, groups, constraints, share in batches:
                with torch.set_grad_enabled(train_actor):
                    logprobs, entropy = response_logprobs(self.actor, groups, cfg.temperature, with_entropy=True,
                                                          constraints=constraints)
                    pl = policy_loss(logprobs, ro.old_logprobs.index_select(0, index),
                                     ro.advantages.index_select(0, index), m, cfg.clip_range)
                if train_actor:
                    self._optimise(pl.loss * share, self.actor_engine, self.actor_opt, self.actor_params)

                values = head_outputs(self.critic, groups)[:, :-1]
                vl = value_loss(values, ro.values.index_select(0, index), ro.returns.index_select(0, index), m,
                                cfg.clip_range_value)
                self._optimise(vl.loss * share, self.critic_engine, self.critic_opt, self.critic_params)

                means = {"policy_loss": pl.loss.detach(), "value_loss": vl.loss.detach(),
                         "entropy": masked_mean(entropy.detach(), m), "clip_fraction": pl.clip_fraction,
                         "value_clip_fraction": vl.clip_fraction, "approx_kl": pl.approx_kl}
                for key, value in means.items():
                    sums[key].append(float(value) * share)
        self.actor.eval()
        self.critic.eval()
        if self.ema is not None:
            self._update_ema()
        return distributed.all_reduce_mean({k: float(np.mean(v)) for k, v in sums.items()})

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.cfg.ema_decay
        for name, p in self.actor.named_parameters():
            if name in self.ema:
                self.ema[name].mul_(decay).add_(p.detach(), alpha=1.0 - decay)

    def step(self) -> dict[str, Any]:
        """One PPO step on the next batch of prompts; returns (and records) its metrics."""
        started = time.monotonic()
        ro = self.rollout(self.batch_for_step(self.global_step))
        train_stats = self.train_on(ro)
        self.global_step += 1
        record = {"step": self.global_step, **ro.stats, **train_stats,
                  "seconds": round(time.monotonic() - started, 3)}
        if not all(math.isfinite(v) for v in record.values() if isinstance(v, float)):
            # deterministic given the seed and config: a retry diverges the same way (exit 2, not 1)
            raise BadInput(f"PPO diverged: non-finite metrics at step {self.global_step} "
                           f"({', '.join(k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v))}); "
                           "lower actor_learning_rate / critic_learning_rate or raise kl_coef",
                           field="stages.ppo.actor_learning_rate")
        self.history.append(record)
        if self.on_log is not None:
            self.on_log(record)
        return record

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, examples: Sequence[PromptExample], batch_size: int = 32, use_ema: bool = False
                 ) -> dict[str, float]:
        """Greedy answers for ``examples``, generated as ``predict`` does: mean reward and execution accuracy.

        The reward is this run's mode (RM score of the cleaned SQL, execution reward, or both) before
        clipping and without the KL term.
        """
        from ...models.generation import generate as generate_sql
        from ..reward_model import score_texts

        swapped = self._swap_in_ema() if use_ema and self.ema is not None else None
        try:
            with self._gathered():
                generations = generate_sql(self.actor, self.tokenizer, [e.prompt for e in examples],
                                           batch_size=batch_size, max_new_tokens=self.cfg.max_new_tokens,
                                           max_source_length=self.cfg.max_source_length,
                                           copy_values=self.cfg.copy_values)
        finally:
            if swapped is not None:
                self._restore(swapped)
        sqls = [g.sql for g in generations]
        rm_scores = None
        out: dict[str, float] = {}
        if self.rewards.needs_rm:
            with self.critic.disable_adapter():
                scores = [score_texts(self.critic, self.tokenizer, [e.prompt for e in examples[i:i + batch_size]],
                                      sqls[i:i + batch_size], self.cfg.max_source_length + self.cfg.max_new_tokens,
                                      keys=[e.db_id for e in examples[i:i + batch_size]])
                          for i in range(0, len(examples), batch_size)]
            rm_scores = torch.cat(scores).tolist()
        items = [(e.db_id, e.query, s) for e, s in zip(examples, sqls, strict=True)]
        totals, stats = self.rewards.score(items, rm_scores)
        if "rm_score" in stats:
            out["rm_score"] = stats["rm_score"]
        if self.judge is not None:  # an rm-only reward still reports EX when a judge is at hand
            out["execution_accuracy"] = stats["exec_match"] if "exec_match" in stats else float(
                np.mean([v is Verdict.MATCH for v in self.judge.verdicts(items)]))
        out["reward"] = float(np.mean(totals))
        return out

    @torch.no_grad()
    def _swap_in_ema(self) -> dict[str, torch.Tensor]:
        saved = {}
        for name, p in self.actor.named_parameters():
            if name in self.ema:
                saved[name] = p.detach().clone()
                p.copy_(self.ema[name])
        return saved

    @torch.no_grad()
    def _restore(self, saved: dict[str, torch.Tensor]) -> None:
        for name, p in self.actor.named_parameters():
            if name in saved:
                p.copy_(saved[name])

    def publish_actor(self, directory: Path) -> None:
        """Save the actor's adapter (PEFT format), the EMA adapter with ``ema``; the SFT base is not copied."""
        swapped = self._swap_in_ema() if self.ema is not None else None
        try:
            with self._gathered():
                self.actor.save_pretrained(str(directory))
        finally:
            if swapped is not None:
                self._restore(swapped)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "global_step": self.global_step,
            "actor": trainable_state(self.actor),
            "critic": trainable_state(self.critic),
            "actor_optimizer": self.actor_opt.state_dict(),
            "critic_optimizer": self.critic_opt.state_dict(),
            "ema": self.ema,
            "history": self.history,
            "rng": rng_state(),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_trainable_state(self.actor, state["actor"], what="actor")
        load_trainable_state(self.critic, state["critic"], what="critic")
        self.actor_opt.load_state_dict(state["actor_optimizer"])
        self.critic_opt.load_state_dict(state["critic_optimizer"])
        self.ema = state["ema"]
        self.history = list(state["history"])
        self.global_step = int(state["global_step"])
        restore_rng(state["rng"])

    def save(self, directory: Path) -> Path:
        """Write the full training state to ``directory`` (atomically) and return the file."""
        state = self.state_dict()
        state.pop("rng")  # save_training_state records the generators itself
        return save_training_state(directory, state, step=self.global_step)

    def load(self, directory: Path) -> None:
        self.load_state_dict(load_training_state(directory, restore_generators=False))

    def optimizer_steps(self) -> int:
        """How many Adam steps the actor optimizer has taken (its restored state proves a real resume)."""
        states = [s for s in self.actor_opt.state.values() if "step" in s]
        return int(states[0]["step"]) if states else 0
