"""Every RL loss in one module (PPO, GRPO, DPO), kept apart from the loops so that every formula is unit-tested by hand.

All tensors are ``(batch, time)`` over one sequence layout (prompt + response + padding); a float
``mask`` of the same shape marks the positions that are actions (response tokens). Every reduction
is a *masked* one, so prompt and padding tokens never contribute to a loss, a statistic or an
advantage. Conventions follow InstructGPT / DeepSpeed-Chat: the reward is a per-token KL penalty
plus the (clipped) sequence score at the last response token; advantages come from GAE; the
policy and value losses are the clipped PPO surrogates. Then GRPO's group advantages and its three
token normalisations, then DPO's sequence-level sigmoid loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "DPOLossOutput",
    "GRPOLossOutput",
    "GRPOLossType",
    "KLKind",
    "PolicyLossOutput",
    "RewardScaling",
    "ValueLossOutput",
    "compute_gae",
    "dpo_loss",
    "entropy_from_logits",
    "group_advantages",
    "grpo_loss",
    "kl_penalty",
    "last_token_index",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "policy_loss",
    "sequence_logprobs",
    "token_rewards",
    "value_loss",
]

KLKind = Literal["k1", "abs", "mse", "k3"]


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the positions where ``mask`` is 1 (token-level: every action counts once).

    With ``dim=None`` all masked positions of the batch are pooled. An all-zero mask gives 0, not NaN,
    so that a batch of empty responses does not poison the optimizer.
    """
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp_min(1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked positions (Bessel-corrected by default, like ``torch.var``)."""
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    centered = (values - mean) * mask
    n = mask.sum()
    var = (centered**2).sum() / n.clamp_min(1.0)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """Normalise to unit variance (and zero mean unless ``shift_mean=False``) over masked positions.

    Masked-out positions come back as 0 so they cannot leak into a later unmasked reduction.
    """
    mean = masked_mean(values, mask)
    var = masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) for each position: ``logits`` is ``(B, T, V)``, ``labels`` is ``(B, T)``."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, 2, labels.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position, ``(B, T, V) -> (B, T)``."""
    logits = logits.float()
    logp = F.log_softmax(logits, dim=-1)
    # a masked token (logit -inf) has p = 0 and adds nothing (not 0 * -inf = nan)
    return -(logp.exp() * logp.clamp_min(torch.finfo(logp.dtype).min)).sum(-1)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: KLKind = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probabilities.

    ``k1`` is the plain log-ratio (InstructGPT, DeepSpeed-Chat); ``abs`` and ``mse`` (half squared
    log-ratio) are always >= 0; ``k3`` is Schulman's unbiased, non-negative estimator
    ``(r - 1) - log r`` with ``r = p_ref / p``.
    """
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "abs":
        return log_ratio.abs()
    if kind == "mse":
        return 0.5 * log_ratio.square()
    if kind == "k3":
        neg = -log_ratio
        return neg.exp() - 1.0 - neg
    raise ValueError(f"unknown KL estimator `{kind}`; use one of k1, abs, mse, k3")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position with ``mask == 1`` in each row (-1 for an all-zero row)."""
    t = mask.shape[1]
    positions = torch.arange(t, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values


def token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                  mask: torch.Tensor, kl_coef: float, clip_score: float | None = None,
                  kl_kind: KLKind = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: ``-kl_coef * KL_t`` on every action, plus the sequence score at the last one.

    ``scores`` is ``(B,)`` (RM score, execution reward or both); it is clipped to ``[-clip_score,
    clip_score]`` when ``clip_score`` is given (DeepSpeed-Chat clips at 5). A row without any action
    gets no score. Returns ``(rewards, kl)``, both zero outside ``mask``.
    """
    mask = mask.to(logprobs.dtype)
    kl = kl_penalty(logprobs, ref_logprobs, kl_kind) * mask
    rewards = -kl_coef * kl
    if clip_score is not None:
        scores = scores.clamp(-clip_score, clip_score)
    last = last_token_index(mask)
    rows = torch.nonzero(last >= 0).squeeze(-1)
    rewards = rewards.clone()
    rewards[rows, last[rows]] += scores[rows].to(rewards.dtype)
    return rewards, kl


def compute_gae(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the masked positions only.

    Walking backwards, each action's TD error uses the value of the *next action* in the row (0 after
    the last one), so prompt tokens, padding and any gap are skipped rather than bootstrapped from.
    ``delta_t = r_t + gamma * V_next - V_t``, ``A_t = delta_t + gamma * lam * A_next``; returns are
    ``A + V``. Both outputs are 0 outside ``mask`` and carry no gradient.
    """
    values = values.detach()
    rewards = rewards.detach()
    maskb = mask.bool()
    batch, t = values.shape
    advantages = torch.zeros_like(values)
    next_value = torch.zeros(batch, dtype=values.dtype, device=values.device)
    next_adv = torch.zeros_like(next_value)
    for i in reversed(range(t)):
        m = maskb[:, i]
        delta = rewards[:, i] + gamma * next_value - values[:, i]
        adv = delta + gamma * lam * next_adv
        advantages[:, i] = torch.where(m, adv, torch.zeros_like(adv))
        next_value = torch.where(m, values[:, i], next_value)
        next_adv = torch.where(m, adv, next_adv)
    returns = (advantages + values) * maskb.to(values.dtype)
    return advantages, returns


@dataclass(frozen=True)
class PolicyLossOutput:
    """The clipped surrogate and the diagnostics PPO implementations usually log."""

    loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_range: float) -> PolicyLossOutput:
    """PPO clipped surrogate: ``mean_t max(-A r, -A clip(r, 1-eps, 1+eps))`` with ``r = pi/pi_old``.

    ``approx_kl`` is ``0.5 * mean (log r)^2`` between the current and the rollout policy (a drift
    gauge, not the reward's KL term).
    """
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
        approx_kl = masked_mean(0.5 * log_ratio.square(), mask)
    return PolicyLossOutput(loss=loss, clip_fraction=clip_fraction, approx_kl=approx_kl)


@dataclass(frozen=True)
class ValueLossOutput:
    """The clipped value loss and the share of positions where the clipped branch was taken."""

    loss: torch.Tensor
    clip_fraction: torch.Tensor


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range_value: float) -> ValueLossOutput:
    """Clipped value loss ``0.5 * mean_t max((V - R)^2, (V_clip - R)^2)``.

    ``V_clip = V_old + clip(V - V_old, -eps, eps)`` keeps the critic from moving further than
    ``eps`` per rollout, the way the policy ratio is kept near 1.
    """
    clipped_values = old_values + (values - old_values).clamp(-clip_range_value, clip_range_value)
    loss_unclipped = (values - returns).square()
    loss_clipped = (clipped_values - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((loss_clipped > loss_unclipped).to(values.dtype), mask)
    return ValueLossOutput(loss=loss, clip_fraction=clip_fraction)


# ---------------------------------------------------------------------------------------------------------------
# GRPO: group-normalised advantages (no critic) and the clipped, token-normalised policy loss.
# Rows come in groups of ``G`` consecutive completions of one prompt; the advantage is one number per
# completion, broadcast over its tokens; ``mask`` marks the tokens the loss counts.
RewardScaling = Literal["group", "batch", "none"]
GRPOLossType = Literal["grpo", "dr_grpo", "dapo"]


def group_advantages(rewards: torch.Tensor, num_generations: int, scale: RewardScaling = "group",
                     eps: float = 1e-4, batch_std: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``A_i = (r_i - mean(group)) / scale``: one advantage per completion, and which groups had zero variance.

    ``scale`` is the group's standard deviation (DeepSeekMath), the whole batch's (``batch``, TRL's
    ``scale_rewards="batch"``), or 1 (``none``: Dr. GRPO, which argues the division biases the update
    towards too-easy and too-hard prompts). Standard deviations are Bessel-corrected (``torch.std``),
    ``eps`` is added to them. A zero-variance group's completions all get advantage exactly 0: the
    group teaches nothing, which is what ``frac_reward_zero_std`` counts. ``batch_std`` replaces the
    std of ``rewards`` under ``batch`` scaling: the global batch's, when ``rewards`` is one rank's share.
    Returns ``(advantages (B,), zero_std (B / G,) bool)``.
    """
    if rewards.dim() != 1 or rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {num_generations}")
    grouped = rewards.view(-1, num_generations)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    group_std = grouped.std(dim=1) if num_generations > 1 else torch.zeros(grouped.shape[0], dtype=rewards.dtype)
    zero_std = torch.isclose(group_std, torch.zeros_like(group_std))
    # exactly 0 there: the mean of equal floats can miss them by an ulp, which /eps would blow up
    centred = centred.masked_fill(zero_std.repeat_interleave(num_generations), 0.0)
    if scale == "group":
        return centred / (group_std.repeat_interleave(num_generations) + eps), zero_std
    if scale == "batch":
        if batch_std is None:
            batch_std = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
        return centred / (batch_std + eps), zero_std
    if scale == "none":
        return centred, zero_std
    raise ValueError(f"unknown reward scaling `{scale}`; use group, batch or none")


@dataclass(frozen=True)
class GRPOLossOutput:
    """The loss and its diagnostics (token shares over the counted tokens of these rows)."""

    loss: torch.Tensor
    clip_low: torch.Tensor  # ratio below 1 - epsilon where the advantage is negative (the clip binds)
    clip_high: torch.Tensor  # ratio above 1 + epsilon_high where the advantage is positive
    kl: torch.Tensor  # mean k3 KL to the reference per counted token (0 without a reference)


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              loss_type: GRPOLossType = "dapo", epsilon: float = 0.2, epsilon_high: float | None = None,
              max_new_tokens: int | None = None, beta: float = 0.0, ref_logprobs: torch.Tensor | None = None,
              total_rows: int | None = None, total_tokens: float | None = None) -> GRPOLossOutput:
    """The clipped surrogate ``-min(r A, clip(r, 1 - eps, 1 + eps_high) A)`` plus ``beta`` k3 KL, normalised per ``loss_type``.

    Per-token terms are reduced as the three papers do:

    * ``grpo`` (DeepSeekMath): mean over each sequence's tokens, then mean over sequences, so a
      token of a short completion weighs more than one of a long completion;
    * ``dr_grpo`` (Dr. GRPO): sum over all tokens / (rows x ``max_new_tokens``), a constant, so no
      length bias;
    * ``dapo`` (DAPO): sum over all tokens / number of tokens in the batch (token-level mean).

    ``advantages`` is ``(B,)``, one per completion, broadcast over its tokens. ``epsilon_high``
    (DAPO's clip-higher, 0.28) defaults to ``epsilon``. ``total_rows`` / ``total_tokens`` are the
    generation batch's when this call sees one chunk of it: the chunks' losses then add up to the
    batch's loss (gradient accumulation without changing the normalisation).
    The KL term is DeepSeekMath's k3 estimator ``exp(ref - logp) - (ref - logp) - 1`` (>= 0).
    """
    mask = mask.to(logprobs.dtype)
    eps_high = epsilon if epsilon_high is None else epsilon_high
    ratio = (logprobs - old_logprobs).exp()
    adv = advantages.to(logprobs.dtype).unsqueeze(1)
    per_token = -torch.minimum(ratio * adv, ratio.clamp(1.0 - epsilon, 1.0 + eps_high) * adv)
    kl = torch.zeros_like(per_token)
    if beta:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs the reference policy's log-probabilities")
        log_ref_ratio = ref_logprobs - logprobs
        kl = log_ref_ratio.exp() - log_ref_ratio - 1.0
        per_token = per_token + beta * kl
    rows = logprobs.shape[0] if total_rows is None else total_rows
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp_min(1.0)).sum() / rows
    elif loss_type == "dr_grpo":
        if max_new_tokens is None:
            raise ValueError("loss_type `dr_grpo` needs max_new_tokens (its constant normaliser)")
        loss = (per_token * mask).sum() / (rows * max_new_tokens)
    elif loss_type == "dapo":
        tokens = mask.sum() if total_tokens is None else torch.as_tensor(total_tokens, dtype=mask.dtype)
        loss = (per_token * mask).sum() / tokens.clamp_min(1.0)
    else:
        raise ValueError(f"unknown loss_type `{loss_type}`; use grpo, dr_grpo or dapo")
    with torch.no_grad():
        counted = mask.sum().clamp_min(1.0)
        clip_low = (((ratio < 1.0 - epsilon) & (adv < 0)).to(mask.dtype) * mask).sum() / counted
        clip_high = (((ratio > 1.0 + eps_high) & (adv > 0)).to(mask.dtype) * mask).sum() / counted
        mean_kl = (kl.detach() * mask).sum() / counted
    return GRPOLossOutput(loss=loss, clip_low=clip_low, clip_high=clip_high, kl=mean_kl)


# ---------------------------------------------------------------------------- DPO
# Sequence-level: one log-probability per answer (summed over its tokens), one loss term per pair.


def sequence_logprobs(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` sum of the per-token log-probs where ``mask`` is 1 (answer tokens); prompt and padding add nothing.

    ``torch.where`` rather than a product, so that whatever sits at masked positions (even -inf) is ignored.
    """
    return torch.where(mask.bool(), token_logprobs, torch.zeros_like(token_logprobs)).sum(-1)


@dataclass
class DPOLossOutput:
    """The mean loss and, per pair, what it is made of (detached)."""

    loss: torch.Tensor  # scalar, with gradients
    chosen_rewards: torch.Tensor  # (B,) beta * (log pi(chosen) - log ref(chosen))
    rejected_rewards: torch.Tensor  # (B,) beta * (log pi(rejected) - log ref(rejected))

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float, label_smoothing: float = 0.0) -> DPOLossOutput:
    """The sigmoid DPO loss from sequence log-probs ``(B,)``, averaged over pairs.

    With ``h = beta * ((pi_c - ref_c) - (pi_r - ref_r))`` the loss is
    ``-(1 - eps) * log sigmoid(h) - eps * log sigmoid(-h)``: ``eps = 0`` is DPO, ``eps > 0`` is
    conservative DPO (the preference is taken to be wrong with probability ``eps``).
    """
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    logits = beta * (chosen_ratio - rejected_ratio)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return DPOLossOutput(losses.mean(), (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach())
