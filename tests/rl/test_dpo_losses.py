"""The DPO loss against values computed by hand, the sign of its gradient, and answer-only log-probs."""

from __future__ import annotations

import math

import pytest
import torch

from text2sql_core.rl.losses import dpo_loss, sequence_logprobs

# One pair: log pi(c) = -2, log pi(r) = -5, log ref(c) = -3, log ref(r) = -4, beta = 0.1.
# Log-ratios: chosen -2 - (-3) = 1, rejected -5 - (-4) = -1, so h = 0.1 * (1 - (-1)) = 0.2 and
#   -log sigmoid(0.2)  = log(1 + e^-0.2) = log(1.8187307531) = 0.5981388693
#   -log sigmoid(-0.2) = log(1 + e^0.2)  = log(2.2214027582) = 0.7981388693
H = 0.2
NEG_LOGSIG_H = 0.5981388693
NEG_LOGSIG_MINUS_H = 0.7981388693
SIGMOID_MINUS_H = 0.4501660027  # 1 / (1 + e^0.2)
SIGMOID_H = 0.5498339973


def _pair(requires_grad: bool = False):
    pc = torch.tensor([-2.0], requires_grad=requires_grad)
    pr = torch.tensor([-5.0], requires_grad=requires_grad)
    return pc, pr, torch.tensor([-3.0]), torch.tensor([-4.0])


def test_sigmoid_loss_and_implicit_rewards_by_hand():
    pc, pr, rc, rr = _pair()
    out = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert float(out.loss) == pytest.approx(NEG_LOGSIG_H, abs=1e-7)
    assert out.chosen_rewards.tolist() == pytest.approx([0.1])  # beta * log-ratio
    assert out.rejected_rewards.tolist() == pytest.approx([-0.1])
    assert out.margins.tolist() == pytest.approx([H])


def test_loss_is_the_mean_over_pairs():
    # the second pair has equal log-ratios (h = 0): its loss is log 2
    out = dpo_loss(torch.tensor([-2.0, -1.0]), torch.tensor([-5.0, -1.0]), torch.tensor([-3.0, -1.0]),
                   torch.tensor([-4.0, -1.0]), beta=0.1)
    assert float(out.loss) == pytest.approx((NEG_LOGSIG_H + math.log(2)) / 2, abs=1e-7)


def test_label_smoothing_mixes_in_the_flipped_preference():
    pc, pr, rc, rr = _pair()
    out = dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.1)
    # 0.9 * 0.5981388693 + 0.1 * 0.7981388693
    assert float(out.loss) == pytest.approx(0.6181388693, abs=1e-7)
    # the implicit rewards do not depend on the smoothing
    assert out.chosen_rewards.tolist() == pytest.approx([0.1])


def test_gradient_raises_the_chosen_and_lowers_the_rejected_log_prob():
    pc, pr, rc, rr = _pair(requires_grad=True)
    dpo_loss(pc, pr, rc, rr, beta=0.1).loss.backward()
    # dL/dh = -sigmoid(-h); dh/dpi_c = beta, dh/dpi_r = -beta
    assert pc.grad.tolist() == pytest.approx([-0.1 * SIGMOID_MINUS_H], abs=1e-7)
    assert pr.grad.tolist() == pytest.approx([0.1 * SIGMOID_MINUS_H], abs=1e-7)
    # a descent step therefore moves log pi(chosen) up and log pi(rejected) down
    assert pc.grad.item() < 0 < pr.grad.item()


def test_conservative_dpo_stops_pushing_once_the_pair_is_confidently_ranked():
    pc, pr, rc, rr = _pair(requires_grad=True)
    dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.1).loss.backward()
    # dL/dh = -(1 - eps) sigmoid(-h) + eps sigmoid(h) = -0.9 * 0.45017 + 0.1 * 0.54983 = -0.35017
    assert pc.grad.tolist() == pytest.approx([0.1 * (-0.9 * SIGMOID_MINUS_H + 0.1 * SIGMOID_H)], abs=1e-7)
    # beyond sigmoid(h) = 1 - eps (h > log 9 = 2.197) the smoothed loss pulls the margin back
    pc = torch.tensor([30.0], requires_grad=True)  # h = 0.1 * (33 - (-1)) = 3.4
    dpo_loss(pc, torch.tensor([-5.0]), torch.tensor([-3.0]), torch.tensor([-4.0]), beta=0.1,
             label_smoothing=0.1).loss.backward()
    assert pc.grad.item() > 0
    pc = torch.tensor([30.0], requires_grad=True)
    dpo_loss(pc, torch.tensor([-5.0]), torch.tensor([-3.0]), torch.tensor([-4.0]), beta=0.1).loss.backward()
    assert pc.grad.item() < 0  # plain DPO keeps pushing


def test_sequence_logprob_sums_answer_tokens_only():
    tokens = torch.tensor([[-0.5, -1.0, -2.0, float("-inf")],   # last column: padding after eos
                           [-0.25, float("nan"), -7.0, -9.0]])  # masked positions may hold anything
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert sequence_logprobs(tokens, mask).tolist() == [-3.5, -0.25]


def test_masked_positions_get_no_gradient():
    tokens = torch.tensor([[-0.5, -1.0, -2.0]], requires_grad=True)
    sequence_logprobs(tokens, torch.tensor([[1, 1, 0]])).sum().backward()
    assert tokens.grad.tolist() == [[1.0, 1.0, 0.0]]
