"""The PPO loop's plumbing on a random tiny Llama: masks, the reference = adapter off, EMA, exact resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from text2sql_core.rl.packing import response_logprobs
from text2sql_core.rl.ppo.config import PPOConfig
from text2sql_core.rl.ppo.trainer import PPOTrainer
from text2sql_core.rl.reward_model import add_lora, sequence_classifier_from_policy
from text2sql_core.rl.rewards import ExecutionJudge
from text2sql_core.rl.rollout import PromptExample, response_mask


def make_trainer(policy, tokenizer, rows, judge, **overrides):
    torch.manual_seed(1)
    critic = add_lora(sequence_classifier_from_policy(copy.deepcopy(policy), tokenizer), r=4, alpha=8, dropout=0.0,
                      target_modules="all-linear", task="SEQ_CLS").eval()
    actor = add_lora(policy, r=4, alpha=8, dropout=0.0, target_modules="all-linear", task="CAUSAL_LM").eval()
    settings = {"batch_size": 4, "max_new_tokens": 10, "reward": {"mode": "hybrid"}, "actor_learning_rate": 1e-2,
                "critic_learning_rate": 1e-2, "kl_coef": 0.1, **overrides}
    examples = [PromptExample(r["prompt"], r["db_id"], r["query"]) for r in rows[:8]]
    return PPOTrainer(actor, critic, tokenizer, examples, PPOConfig(**settings), judge=judge, seed=3)


@pytest.fixture(scope="module")
def judge(spider_sample):
    return ExecutionJudge(spider_sample / "database")


def test_response_mask_stops_after_the_first_eos():
    responses = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    assert response_mask(responses, eos_token_id=2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_first_rollout_masks_and_rewards(tiny_policy, tiny_tokenizer, spider_rows, judge):
    trainer = make_trainer(tiny_policy, tiny_tokenizer, spider_rows, judge)
    torch.manual_seed(0)
    ro = trainer.rollout(trainer.batch_for_step(0))
    mask = ro.mask
    assert mask.shape == ro.old_logprobs.shape == ro.values.shape == ro.rewards.shape
    # a fresh LoRA (B = 0) leaves the actor equal to the reference: the KL term is exactly zero
    torch.testing.assert_close(ro.old_logprobs, ro.ref_logprobs)
    assert torch.count_nonzero(ro.kl) == 0
    # so each row's reward is its clipped score, at its last response token only
    last = mask.sum(1).long() - 1
    expected = torch.zeros_like(ro.rewards)
    expected[torch.arange(4), last] = ro.scores.clamp(-5, 5)
    torch.testing.assert_close(ro.rewards, expected)
    for tensor in (ro.values, ro.advantages, ro.returns):
        assert torch.count_nonzero(tensor * (1 - mask)) == 0  # padding after EOS carries nothing
    assert len(ro.texts) == 4 and {"reward", "kl", "response_length", "exec_match", "rm_score"} <= set(ro.stats)


def test_reference_stays_the_sft_policy_while_the_actor_moves(tiny_policy, tiny_tokenizer, spider_rows, judge):
    frozen = copy.deepcopy(tiny_policy)
    trainer = make_trainer(tiny_policy, tiny_tokenizer, spider_rows, judge, ppo_epochs=2)
    torch.manual_seed(0)
    ro = trainer.rollout(trainer.batch_for_step(0))
    trainer.train_on(ro)
    groups = trainer.pack(ro.prompt_tokens, ro.responses, ro.mask, ro.examples)
    with torch.no_grad():
        expected, _ = response_logprobs(frozen, groups)
        with trainer.actor.disable_adapter():
            reference, _ = response_logprobs(trainer.actor, groups)
        moved, _ = response_logprobs(trainer.actor, groups)
    torch.testing.assert_close(reference, expected)
    assert not torch.allclose(moved * ro.mask, expected * ro.mask, atol=1e-4)
    # only adapter weights train: the base model is untouched
    base = dict(frozen.named_parameters())
    for name, p in trainer.actor.get_base_model().named_parameters():
        if "lora_" not in name:
            torch.testing.assert_close(p, base[name.replace(".base_layer", "")])


def test_prompts_cycle_through_seeded_epochs(tiny_policy, tiny_tokenizer, spider_rows, judge):
    trainer = make_trainer(tiny_policy, tiny_tokenizer, spider_rows, judge)
    epoch0 = trainer.batch_for_step(0) + trainer.batch_for_step(1)
    assert sorted(e.prompt for e in epoch0) == sorted(e.prompt for e in trainer.examples)
    assert trainer.batch_for_step(2) + trainer.batch_for_step(3) != epoch0  # a new order each epoch
    assert trainer.batch_for_step(1) == trainer.batch_for_step(1)


def test_checkpoint_resume_reproduces_the_next_step(tiny_policy, tiny_tokenizer, spider_rows, judge, tmp_path):
    policy_copy = copy.deepcopy(tiny_policy)
    first = make_trainer(tiny_policy, tiny_tokenizer, spider_rows, judge, ema=True)
    torch.manual_seed(0)
    first.step()
    first.save(tmp_path / "ckpt")
    expected = first.step()

    resumed = make_trainer(policy_copy, tiny_tokenizer, spider_rows, judge, ema=True)
    torch.manual_seed(123)  # the checkpoint's RNG state must win over whatever the process had
    resumed.load(tmp_path / "ckpt")
    assert resumed.global_step == 1 and resumed.optimizer_steps() == 1
    got = resumed.step()
    for key in ("reward", "kl", "policy_loss", "value_loss", "entropy", "response_length"):
        assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
    assert resumed.optimizer_steps() == first.optimizer_steps() == 2
    for name, value in first.ema.items():
        torch.testing.assert_close(resumed.ema[name], value)


def test_ema_tracks_the_adapter(tiny_policy, tiny_tokenizer, spider_rows, judge):
    trainer = make_trainer(tiny_policy, tiny_tokenizer, spider_rows, judge, ema=True, ema_decay=0.9)
    start = {n: v.clone() for n, v in trainer.ema.items()}
    torch.manual_seed(0)
    trainer.step()
    params = dict(trainer.actor.named_parameters())
    for name, value in trainer.ema.items():
        torch.testing.assert_close(value, 0.9 * start[name] + 0.1 * params[name].detach())


def test_evaluate_reports_reward_and_execution_accuracy(tiny_policy, tiny_tokenizer, spider_rows, judge):
    trainer = make_trainer(tiny_policy, tiny_tokenizer, spider_rows, judge, reward={"mode": "execution"})
    out = trainer.evaluate(trainer.examples[:3], batch_size=2)
    assert set(out) == {"reward", "execution_accuracy"}
    assert out["execution_accuracy"] == 0.0 and out["reward"] == pytest.approx(-0.5)  # random weights: no SQL


def test_execution_modes_need_a_judge(tiny_policy, tiny_tokenizer, spider_rows):
    with pytest.raises(ValueError, match="needs an ExecutionJudge"):
        make_trainer(tiny_policy, tiny_tokenizer, spider_rows, None, reward={"mode": "execution"})


def test_critic_warmup_trains_only_the_critic_first(tiny_policy, tiny_tokenizer, spider_rows, judge):
    trainer = make_trainer(tiny_policy, tiny_tokenizer, spider_rows, judge, critic_warmup_steps=1)
    actor0 = {n: p.detach().clone() for n, p in trainer.actor.named_parameters() if p.requires_grad}
    critic0 = {n: p.detach().clone() for n, p in trainer.critic.named_parameters() if p.requires_grad}
    torch.manual_seed(0)
    trainer.step()
    actor = dict(trainer.actor.named_parameters())
    critic = dict(trainer.critic.named_parameters())
    assert all(torch.equal(actor[n], v) for n, v in actor0.items())
    assert any(not torch.equal(critic[n], v) for n, v in critic0.items())
    trainer.step()  # warm-up over: the actor moves too
    assert any(not torch.equal(actor[n], v) for n, v in actor0.items())


def test_value_copy_rollouts_score_the_constrained_policy(tiny_policy, tiny_tokenizer, spider_rows, judge):
    trainer = make_trainer(tiny_policy, tiny_tokenizer, spider_rows, judge, copy_values=True)
    torch.manual_seed(0)
    ro = trainer.rollout(trainer.batch_for_step(0))
    assert ro.constraints is not None
    assert bool((ro.constraints.positions < ro.mask.shape[1]).all())
    torch.testing.assert_close(ro.old_logprobs, ro.ref_logprobs)
    assert torch.isfinite(ro.old_logprobs).all()
    stats = trainer.train_on(ro)
    assert all(math.isfinite(v) for v in stats.values())
