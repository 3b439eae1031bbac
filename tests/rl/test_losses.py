"""PPO formulas checked against values worked out by hand on tensors small enough to follow."""

from __future__ import annotations

import math

import pytest
import torch

from text2sql_core.rl.losses import (
    compute_gae,
    entropy_from_logits,
    kl_penalty,
    last_token_index,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_gae_by_hand_skips_prompt_and_padding():
    # layout: [prompt, a1, a2, a3, pad]; prompt and pad carry junk that must not matter.
    values = t([7.0, 1.0, 2.0, 3.0, 9.0])
    rewards = t([4.0, 0.5, 0.0, 1.0, 8.0])
    mask = t([0, 1, 1, 1, 0])
    adv, ret = compute_gae(values, rewards, mask, gamma=0.9, lam=0.8)
    # t=3: delta = 1 + 0.9*0 - 3 = -2           A3 = -2
    # t=2: delta = 0 + 0.9*3 - 2 = 0.7          A2 = 0.7 + 0.72*(-2) = -0.74
    # t=1: delta = 0.5 + 0.9*2 - 1 = 1.3        A1 = 1.3 + 0.72*(-0.74) = 0.7672
    torch.testing.assert_close(adv, t([0.0, 0.7672, -0.74, -2.0, 0.0]))
    torch.testing.assert_close(ret, t([0.0, 1.7672, 1.26, 1.0, 0.0]))


def test_gae_bootstraps_across_a_masked_gap_from_the_next_action():
    values = t([1.0, 5.0, 2.0])
    rewards = t([0.0, 100.0, 1.0])
    mask = t([1, 0, 1])
    adv, _ = compute_gae(values, rewards, mask, gamma=1.0, lam=1.0)
    # t=2: delta = 1 - 2 = -1; t=0: delta = 0 + 2 - 1 = 1, A0 = 1 + (-1) = 0
    torch.testing.assert_close(adv, t([0.0, 0.0, -1.0]))


def test_gae_rows_are_independent_and_lambda_zero_is_td0():
    values = t([1.0, 2.0], [0.5, 0.0])
    rewards = t([0.0, 1.0], [2.0, 0.0])
    mask = t([1, 1], [1, 0])
    adv, _ = compute_gae(values, rewards, mask, gamma=0.5, lam=0.0)
    # row0: A1 = 1 - 2 = -1; A0 = 0 + 0.5*2 - 1 = 0 (lam=0: no carry). row1: A0 = 2 - 0.5 = 1.5
    torch.testing.assert_close(adv, t([0.0, -1.0], [1.5, 0.0]))


def test_policy_loss_by_hand_takes_the_pessimistic_branch():
    logprobs = torch.log(t([0.5, 0.6, 0.9]))
    old = torch.log(t([0.4, 0.4, 0.1]))
    adv = t([1.0, -1.0, 50.0])
    mask = t([1, 1, 0])
    out = policy_loss(logprobs, old, adv, mask, clip_range=0.2)
    # token0: r=1.25, A=1: max(-1.25, -1.2) = -1.2 (clipped); token1: r=1.5, A=-1: max(1.5, 1.2) = 1.5
    assert out.loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert out.clip_fraction.item() == pytest.approx(0.5)
    expected_kl = 0.5 * (math.log(1.25) ** 2 + math.log(1.5) ** 2) / 2
    assert out.approx_kl.item() == pytest.approx(expected_kl)


def test_policy_loss_sends_no_gradient_to_masked_tokens():
    logprobs = torch.log(t([0.5, 0.6, 0.9])).requires_grad_(True)
    old = torch.log(t([0.5, 0.6, 0.1]))
    out = policy_loss(logprobs, old, t([1.0, -2.0, 3.0]), t([1, 1, 0]), clip_range=0.2)
    out.loss.backward()
    # at ratio 1 the surrogate's gradient is -A/n for each action, 0 for the masked token
    torch.testing.assert_close(logprobs.grad, t([-0.5, 1.0, 0.0]))


def test_value_loss_by_hand_clips_the_critic_step():
    values = t([1.5, 0.0, 40.0])
    old = t([1.0, 0.0, 0.0])
    returns = t([2.0, 1.0, 0.0])
    mask = t([1, 1, 0])
    out = value_loss(values, old, returns, mask, clip_range_value=0.2)
    # token0: (1.5-2)^2 = 0.25 vs clipped V=1.2: (1.2-2)^2 = 0.64 -> 0.64; token1: 1.0 both
    assert out.loss.item() == pytest.approx(0.5 * (0.64 + 1.0) / 2)
    assert out.clip_fraction.item() == pytest.approx(0.5)


@pytest.mark.parametrize(("kind", "expected"), [
    ("k1", 0.5), ("abs", 0.5), ("mse", 0.125), ("k3", math.exp(-0.5) - 1 + 0.5),
])
def test_kl_estimators_by_hand(kind, expected):
    out = kl_penalty(t([-1.0]), t([-1.5]), kind)
    assert out.item() == pytest.approx(expected)


def test_kl_estimator_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown KL estimator `k9`"):
        kl_penalty(t([0.0]), t([0.0]), "k9")


def test_token_rewards_put_kl_on_actions_and_clipped_score_on_the_last_one():
    logprobs = t([0.0, -1.0, -1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0])
    ref = t([3.0, -1.5, -0.5, 3.0], [0.0, -1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0])
    mask = t([0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0])
    rewards, kl = token_rewards(t(3.0, -10.0, 7.0), logprobs, ref, mask, kl_coef=0.1, clip_score=5.0)
    # row0: kl = [0, 0.5, -0.5, 0] -> rewards [0, -0.05, 0.05 + 3, 0]; row1: score -10 clipped to -5
    # row2: no action, so neither KL nor score lands anywhere
    torch.testing.assert_close(rewards, t([0.0, -0.05, 3.05, 0.0], [0.0, -5.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(kl, t([0.0, 0.5, -0.5, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]))


def test_last_token_index():
    idx = last_token_index(torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]))
    assert idx.tolist() == [2, 0, -1]


def test_masked_statistics_by_hand():
    values = t([1.0, 2.0, 3.0, 100.0])
    mask = t([1, 1, 1, 0])
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    assert masked_var(values, mask).item() == pytest.approx(1.0)
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(2 / 3)
    torch.testing.assert_close(masked_whiten(values, mask), t([-1.0, 0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(masked_whiten(values, mask, shift_mean=False), t([1.0, 2.0, 3.0, 0.0]),
                               atol=1e-6, rtol=0)
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0
    torch.testing.assert_close(masked_mean(t([1.0, 3.0], [5.0, 0.0]), t([1, 1], [1, 0]), dim=1), t(2.0, 5.0))


def test_logprobs_and_entropy_from_logits():
    logits = torch.log(torch.tensor([[[0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]]]))
    lp = logprobs_from_logits(logits, torch.tensor([[2, 0]]))
    torch.testing.assert_close(lp, torch.log(torch.tensor([[0.25, 0.7]])))
    ent = entropy_from_logits(logits)
    expected = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1))
    torch.testing.assert_close(ent, torch.tensor([[math.log(4), expected]]))
