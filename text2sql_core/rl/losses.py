"""The PPO arithmetic, kept apart from the loop so that every formula is unit-tested by hand.

All tensors are ``(batch, time)`` over one sequence layout (prompt + response + padding); a float
``mask`` of the same shape marks the positions that are actions (response tokens). Every reduction
is a *masked* one, so prompt and padding tokens never contribute to a loss, a statistic or an
advantage. Conventions follow InstructGPT / DeepSpeed-Chat: the reward is a per-token KL penalty
plus the (clipped) sequence score at the last response token; advantages come from GAE; the
policy and value losses are the clipped PPO surrogates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "KLKind",
    "PolicyLossOutput",
    "ValueLossOutput",
    "compute_gae",
    "entropy_from_logits",
    "kl_penalty",
    "last_token_index",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "policy_loss",
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
