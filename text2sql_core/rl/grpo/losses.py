"""GRPO's arithmetic: group-normalised advantages and the clipped, token-normalised policy loss.

Kept apart from the loop so that every formula is checked by hand on small tensors. Layout as in
PPO: ``(rows, response_length)`` tensors, a float ``mask`` marking the response tokens that count
(padding after EOS, and truncated completions when they are masked, are 0). Rows come in groups of
``G`` consecutive completions of one prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["GRPOLossOutput", "GRPOLossType", "RewardScaling", "group_advantages", "grpo_loss"]

RewardScaling = Literal["group", "batch", "none"]
GRPOLossType = Literal["grpo", "dr_grpo", "dapo"]


def group_advantages(rewards: torch.Tensor, num_generations: int, scale: RewardScaling = "group",
                     eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """``A_i = (r_i - mean(group)) / scale``: one advantage per completion, and which groups had zero variance.

    ``scale`` is the group's standard deviation (DeepSeekMath), the whole batch's (``batch``, TRL's
    ``scale_rewards="batch"``), or 1 (``none``: Dr. GRPO, which argues the division biases the update
    towards too-easy and too-hard prompts). Standard deviations are Bessel-corrected (``torch.std``),
    ``eps`` is added to them. A zero-variance group's completions all get advantage exactly 0: the
    group teaches nothing, which is what ``frac_reward_zero_std`` counts.
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
