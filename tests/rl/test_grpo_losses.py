"""GRPO formulas against values worked out by hand: group advantages, the three normalisations, clip-higher."""

from __future__ import annotations

import math

import pytest
import torch

from text2sql_core.rl.losses import group_advantages, grpo_loss


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


# two groups of G = 4: Arctic's graded rewards in the first, four right answers in the second
REWARDS = torch.tensor([1.0, 0.1, 0.0, 0.1, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
# group 1: mean 0.3, centred [0.7, -0.2, -0.3, -0.2], unbiased var (0.49 + 0.04 + 0.09 + 0.04) / 3 = 0.22
CENTRED = [0.7, -0.2, -0.3, -0.2, 0.0, 0.0, 0.0, 0.0]


def test_group_scaling_divides_by_each_groups_std_and_zero_variance_groups_get_nothing():
    adv, zero_std = group_advantages(REWARDS, 4, "group")
    std1 = math.sqrt(0.22)
    expected = [c / (std1 + 1e-4) for c in CENTRED[:4]] + [0.0] * 4  # group 2: 0 / (0 + eps)
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64))
    assert zero_std.tolist() == [False, True]


def test_batch_scaling_centres_per_group_but_divides_by_the_batch_std():
    adv, _ = group_advantages(REWARDS, 4, "batch")
    # batch mean 5.2 / 8 = 0.65; squared deviations 0.1225 + 0.3025 + 0.4225 + 0.3025 + 4 x 0.1225 = 1.64
    batch_std = math.sqrt(1.64 / 7)
    torch.testing.assert_close(adv, torch.tensor([c / (batch_std + 1e-4) for c in CENTRED], dtype=torch.float64))


def test_no_scaling_only_centres():
    adv, zero_std = group_advantages(REWARDS, 4, "none")
    torch.testing.assert_close(adv, torch.tensor(CENTRED, dtype=torch.float64))
    assert zero_std.tolist() == [False, True]
    # within each group the advantages sum to zero, whatever the scaling
    for scale in ("group", "batch", "none"):
        sums = group_advantages(REWARDS, 4, scale)[0].view(2, 4).sum(1)
        torch.testing.assert_close(sums, torch.zeros(2, dtype=torch.float64))


def test_group_advantages_refuses_a_batch_that_does_not_split_into_groups():
    with pytest.raises(ValueError, match="7 rewards do not split into groups of 4"):
        group_advantages(torch.zeros(7), 4)
    with pytest.raises(ValueError, match="unknown reward scaling `rank`"):
        group_advantages(torch.zeros(4), 2, "rank")  # type: ignore[arg-type]


# Two completions: row 0 has 3 tokens, row 1 has 1 token then padding. The padded positions carry
# junk log-probabilities (ratio e^5) that must change nothing. At ratio 1 the per-token loss is -A.
LOGPROBS = t([-1.0, -2.0, -0.5, 5.0], [-1.5, 5.0, 5.0, 5.0])
OLD = t([-1.0, -2.0, -0.5, 0.0], [-1.5, 0.0, 0.0, 0.0])
MASK = t([1, 1, 1, 0], [1, 0, 0, 0])
ADV = t(2.0, -1.0)


@pytest.mark.parametrize(("loss_type", "expected"), [
    ("grpo", (-2.0 + 1.0) / 2),  # per-sequence means -2 and 1, then their mean
    ("dr_grpo", (-6.0 + 1.0) / (2 * 4)),  # token sum -5 over rows x max_new_tokens = 8
    ("dapo", (-6.0 + 1.0) / 4),  # token sum -5 over the 4 counted tokens
])
def test_each_loss_type_normalises_as_its_paper(loss_type, expected):
    out = grpo_loss(LOGPROBS, OLD, ADV, MASK, loss_type=loss_type, max_new_tokens=4)
    assert float(out.loss.detach()) == pytest.approx(expected)
    assert float(out.clip_low) == float(out.clip_high) == 0.0  # the junk ratios sit on padding only


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_chunks_with_the_batch_totals_add_up_to_the_batch_loss(loss_type):
    whole = grpo_loss(LOGPROBS, OLD, ADV, MASK, loss_type=loss_type, max_new_tokens=4).loss
    parts = sum(grpo_loss(LOGPROBS[i:i + 1], OLD[i:i + 1], ADV[i:i + 1], MASK[i:i + 1], loss_type=loss_type,
                          max_new_tokens=4, total_rows=2, total_tokens=4.0).loss for i in range(2))
    assert float(parts) == pytest.approx(float(whole))


def test_grpo_loss_weighs_tokens_of_short_completions_more():
    # the gradient per token: grpo gives row 1's single token 1/(2*1), row 0's tokens 1/(2*3) each
    logprobs = LOGPROBS.clone().requires_grad_(True)
    grpo_loss(logprobs, OLD, ADV, MASK, loss_type="grpo").loss.backward()
    torch.testing.assert_close(logprobs.grad, t([-2 / 6, -2 / 6, -2 / 6, 0.0], [1 / 2, 0.0, 0.0, 0.0]))
    logprobs.grad = None
    grpo_loss(logprobs, OLD, ADV, MASK, loss_type="dapo").loss.backward()
    torch.testing.assert_close(logprobs.grad, t([-2 / 4, -2 / 4, -2 / 4, 0.0], [1 / 4, 0.0, 0.0, 0.0]))


RATIOS = [0.7, 1.1, 1.3, 1.25]
R_LOGPROBS = t([math.log(r) for r in RATIOS])
R_OLD = t([0.0, 0.0, 0.0, 0.0])
R_MASK = t([1, 1, 1, 1])


def test_clip_higher_lets_positive_advantages_raise_the_ratio_to_1_plus_epsilon_high():
    logprobs = R_LOGPROBS.clone().requires_grad_(True)
    out = grpo_loss(logprobs, R_OLD, t(1.0), R_MASK, loss_type="dapo", epsilon=0.2, epsilon_high=0.28)
    # min(r, clip(r, 0.8, 1.28)) = [0.7, 1.1, 1.28, 1.25]; mean of the negatives
    assert float(out.loss.detach()) == pytest.approx(-(0.7 + 1.1 + 1.28 + 1.25) / 4)
    assert float(out.clip_high) == pytest.approx(1 / 4) and float(out.clip_low) == 0.0
    out.loss.backward()
    # d(-r)/d log r = -r where the unclipped branch is taken; the clipped token gets no gradient
    torch.testing.assert_close(logprobs.grad, t([-0.7 / 4, -1.1 / 4, 0.0, -1.25 / 4]))

    symmetric = grpo_loss(R_LOGPROBS, R_OLD, t(1.0), R_MASK, loss_type="dapo", epsilon=0.2)
    assert float(symmetric.loss) == pytest.approx(-(0.7 + 1.1 + 1.2 + 1.2) / 4)
    assert float(symmetric.clip_high) == pytest.approx(2 / 4)  # 1.3 and 1.25 both exceed 1.2


def test_negative_advantages_are_clipped_below_at_1_minus_epsilon():
    out = grpo_loss(R_LOGPROBS, R_OLD, t(-1.0), R_MASK, loss_type="dapo", epsilon=0.2, epsilon_high=0.28)
    # -min(-r, -clip(r)) = max(r, clip(r, 0.8, 1.28)) = [0.8, 1.1, 1.3, 1.25]
    assert float(out.loss.detach()) == pytest.approx((0.8 + 1.1 + 1.3 + 1.25) / 4)
    assert float(out.clip_low) == pytest.approx(1 / 4) and float(out.clip_high) == 0.0


def test_k3_kl_to_the_reference_is_added_with_beta():
    # p = 0.5, p_ref = 0.25: log(p_ref / p) = -ln 2, k3 = 0.5 + ln 2 - 1
    logprobs = t([math.log(0.5), math.log(0.5)])
    ref = t([math.log(0.25), math.log(0.5)])
    out = grpo_loss(logprobs, logprobs, t(0.0), t([1, 1]), loss_type="dapo", beta=0.1, ref_logprobs=ref)
    k3 = 0.5 + math.log(2) - 1
    assert float(out.kl) == pytest.approx(k3 / 2)
    assert float(out.loss.detach()) == pytest.approx(0.1 * k3 / 2)
    with pytest.raises(ValueError, match="beta > 0 needs the reference"):
        grpo_loss(logprobs, logprobs, t(0.0), t([1, 1]), beta=0.1)


def test_a_zero_variance_group_gives_no_loss_and_no_gradient():
    adv, zero_std = group_advantages(torch.tensor([0.1, 0.1, 0.1], dtype=torch.float64), 3)
    assert bool(zero_std.all())
    logprobs = t([-1.0, -2.0], [-0.3, -0.4], [-2.0, 5.0]).requires_grad_(True)
    out = grpo_loss(logprobs, logprobs.detach(), adv, t([1, 1], [1, 1], [1, 0]), loss_type="grpo")
    out.loss.backward()
    assert float(out.loss.detach()) == 0.0
    assert torch.count_nonzero(logprobs.grad) == 0


def test_unknown_loss_type_and_dr_grpo_without_its_constant_are_refused():
    with pytest.raises(ValueError, match="unknown loss_type `bnpo`"):
        grpo_loss(LOGPROBS, OLD, ADV, MASK, loss_type="bnpo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dr_grpo` needs max_new_tokens"):
        grpo_loss(LOGPROBS, OLD, ADV, MASK, loss_type="dr_grpo")
