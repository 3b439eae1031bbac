"""The GRPO loop's plumbing on a random tiny Llama: groups, masks, no reference at beta 0, chunking, exact resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from text2sql_core.rl.grpo.config import GRPOConfig
from text2sql_core.rl.grpo.trainer import GRPOTrainer
from text2sql_core.rl.packing import response_logprobs
from text2sql_core.rl.reward_model import add_lora
from text2sql_core.rl.rewards import ExecutionJudge
from text2sql_core.rl.rollout import PromptExample


def make_trainer(policy, tokenizer, rows, judge, rm_scorer=None, **overrides):
    torch.manual_seed(1)
    actor = add_lora(policy, r=4, alpha=8, dropout=0.0, target_modules="all-linear", task="CAUSAL_LM").eval()
    settings = {"batch_size": 2, "num_generations": 3, "max_new_tokens": 10, "learning_rate": 1e-2, **overrides}
    examples = [PromptExample(r["prompt"], r["db_id"], r["query"]) for r in rows[:8]]
    return GRPOTrainer(actor, tokenizer, examples, GRPOConfig(**settings), judge=judge, rm_scorer=rm_scorer, seed=3)


def with_advantages(batch, values):
    """A random policy writes no runnable SQL (every reward 0): give the rows advantages to learn from."""
    batch.advantages = torch.tensor(values, dtype=torch.float32)
    return batch


@pytest.fixture(scope="module")
def judge(spider_sample):
    return ExecutionJudge(spider_sample / "database")


def test_a_batch_holds_g_completions_per_prompt_and_zero_variance_groups_are_counted(
        tiny_policy, tiny_tokenizer, spider_rows, judge):
    trainer = make_trainer(tiny_policy, tiny_tokenizer, spider_rows, judge)
    torch.manual_seed(0)
    prompts = trainer.batch_for_step(0)
    batch = trainer.generate(prompts)
    assert [e.prompt for e in batch.examples] == [p.prompt for p in prompts for _ in range(3)]
    assert batch.responses.shape == batch.mask.shape == batch.loss_mask.shape and batch.responses.shape[0] == 6
    # random weights: no completion runs, every group has zero variance and no advantage
    assert batch.rewards.tolist() == [0.0] * 6 and batch.stats["frac_reward_zero_std"] == 1.0
    assert torch.count_nonzero(batch.advantages) == 0
    # beta 0 and one iteration: neither the reference nor an old-policy pass was run
    assert batch.ref_logprobs is None and batch.old_logprobs is None
    assert {"reward", "reward_graded_execution", "exec_match", "completion_length",
            "truncated_fraction"} <= set(batch.stats)
    stats = trainer.train_on(batch)
    assert "kl" not in stats and stats["policy_loss"] == 0.0


def test_the_reference_stays_the_sft_policy_while_the_policy_moves(tiny_policy, tiny_tokenizer, spider_rows, judge):
    frozen = copy.deepcopy(tiny_policy)
    trainer = make_trainer(tiny_policy, tiny_tokenizer, spider_rows, judge, beta=0.1, num_iterations=2)
    torch.manual_seed(0)
    batch = with_advantages(trainer.generate(trainer.batch_for_step(0)), [1.0, -1.0, 0.5, -0.5, 0.2, -0.2])
    # a fresh adapter (LoRA B = 0) is the reference: old and reference log-probs coincide
    torch.testing.assert_close(batch.old_logprobs * batch.mask, batch.ref_logprobs * batch.mask)
    stats = trainer.train_on(batch)
    assert stats["kl"] >= 0.0 and math.isfinite(stats["policy_loss"])
    groups = trainer._pack(batch, range(6))
    with torch.no_grad():
        expected, _ = response_logprobs(frozen, groups)
        with trainer.policy.disable_adapter():
            reference, _ = response_logprobs(trainer.policy, groups)
        moved, _ = response_logprobs(trainer.policy, groups)
    torch.testing.assert_close(reference, expected)
    assert not torch.allclose(moved * batch.mask, expected * batch.mask, atol=1e-4)
    assert trainer.optimizer_steps() == 2  # one optimizer step per iteration


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_chunked_passes_take_the_same_step_as_one_pass(tiny_policy, tiny_tokenizer, spider_rows, judge, loss_type):
    advantages = [1.0, -1.0, 0.5, -0.5, 0.2, -0.2]
    results = []
    for mini in (None, 2):
        trainer = make_trainer(copy.deepcopy(tiny_policy), tiny_tokenizer, spider_rows, judge, loss_type=loss_type,
                               mini_batch_size=mini, max_grad_norm=1e9)
        torch.manual_seed(0)
        batch = with_advantages(trainer.generate(trainer.batch_for_step(0)), advantages)
        stats = trainer.train_on(batch)
        # the gradient the optimizer stepped with (clipping is off), accumulated over the chunks
        results.append((stats, {n: p.grad.clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}))
    (whole, grads_whole), (chunked, grads_chunked) = results
    assert chunked["policy_loss"] == pytest.approx(whole["policy_loss"], rel=1e-4, abs=1e-7)
    assert chunked["entropy"] == pytest.approx(whole["entropy"], rel=1e-4)
    assert any(torch.count_nonzero(g) for g in grads_whole.values())
    for name, value in grads_whole.items():
        torch.testing.assert_close(grads_chunked[name], value, rtol=1e-4, atol=1e-7)


def test_truncated_completions_can_be_left_out_of_the_loss(tiny_policy, tiny_tokenizer, spider_rows, judge):
    trainer = make_trainer(tiny_policy, tiny_tokenizer, spider_rows, judge, max_new_tokens=3,
                           mask_truncated_completions=True)
    torch.manual_seed(0)
    batch = trainer.generate(trainer.batch_for_step(0))
    eos = tiny_tokenizer.eos_token_id
    ended = (batch.responses == eos).any(dim=1)
    assert batch.stats["truncated_fraction"] == pytest.approx(1.0 - ended.float().mean().item())
    assert not bool(ended.all()), "the random policy should run past 3 tokens somewhere"
    assert torch.count_nonzero(batch.loss_mask[~ended]) == 0  # cut rows count for nothing
    torch.testing.assert_close(batch.loss_mask[ended], batch.mask[ended])
    assert bool((batch.mask.sum(1) > 0).all())


def test_value_copy_completions_are_scored_as_the_constrained_policy(tiny_policy, tiny_tokenizer, spider_rows, judge):
    trainer = make_trainer(tiny_policy, tiny_tokenizer, spider_rows, judge, copy_values=True, num_iterations=2)
    torch.manual_seed(0)
    batch = with_advantages(trainer.generate(trainer.batch_for_step(0)), [1.0, -1.0, 0.5, -0.5, 0.2, -0.2])
    assert batch.constraints is not None
    assert torch.isfinite(batch.old_logprobs[batch.mask.bool()]).all()
    stats = trainer.train_on(batch)
    assert all(math.isfinite(v) for v in stats.values())


def test_checkpoint_resume_reproduces_the_next_step(tiny_policy, tiny_tokenizer, spider_rows, judge, tmp_path):
    policy_copy = copy.deepcopy(tiny_policy)
    first = make_trainer(tiny_policy, tiny_tokenizer, spider_rows, judge, rewards=[{"name": "syntax"}])
    torch.manual_seed(0)
    first.step()
    first.save(tmp_path / "ckpt")
    expected = first.step()

    resumed = make_trainer(policy_copy, tiny_tokenizer, spider_rows, judge, rewards=[{"name": "syntax"}])
    torch.manual_seed(123)  # the checkpoint's RNG state must win over whatever the process had
    resumed.load(tmp_path / "ckpt")
    assert resumed.global_step == 1 and resumed.optimizer_steps() == 1
    got = resumed.step()
    for key in ("reward", "policy_loss", "entropy", "completion_length"):
        assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
    assert resumed.optimizer_steps() == first.optimizer_steps() == 2
    assert [r["step"] for r in resumed.history] == [1, 2]


def test_evaluate_reports_reward_and_execution_accuracy(tiny_policy, tiny_tokenizer, spider_rows, judge):
    trainer = make_trainer(tiny_policy, tiny_tokenizer, spider_rows, judge)
    out = trainer.evaluate(trainer.examples[:3], batch_size=2)
    assert out == {"reward": 0.0, "execution_accuracy": 0.0, "reward_graded_execution": 0.0}


def test_config_refusals_name_the_field_and_the_fix():
    with pytest.raises(ValueError, match="`mini_batch_size` 5 must divide batch_size x num_generations = 16"):
        GRPOConfig(batch_size=2, num_generations=8, mini_batch_size=5)
    with pytest.raises(ValueError, match="`epsilon_high` 0.1 is below `epsilon` 0.2"):
        GRPOConfig(epsilon_high=0.1)
    with pytest.raises(ValueError, match="`rewards` names a function twice"):
        GRPOConfig(rewards=[{"name": "syntax"}, {"name": "syntax"}])
    with pytest.raises(ValueError, match="`rewards` is empty"):
        GRPOConfig(rewards=[])
    assert GRPOConfig().rewards[0].name == "graded_execution"


def test_an_rm_term_is_scored_by_the_reward_model_scorer(tiny_policy, tiny_tokenizer, spider_rows, judge):
    with pytest.raises(ValueError, match="`rm` reward term needs the reward model's scorer"):
        make_trainer(copy.deepcopy(tiny_policy), tiny_tokenizer, spider_rows, judge, rewards=[{"name": "rm"}])
    seen = []

    def length_score(examples, texts):  # a stand-in reward model: longer SQL scores higher
        seen.append(len(texts))
        return [float(len(t)) for t in texts]

    trainer = make_trainer(tiny_policy, tiny_tokenizer, spider_rows, judge, rm_scorer=length_score,
                           rewards=[{"name": "rm", "weight": 0.5}, {"name": "syntax"}])
    torch.manual_seed(0)
    batch = trainer.generate(trainer.batch_for_step(0))
    assert seen == [6]
    # random weights: nothing runs (syntax 0), so the reward is half the length score
    torch.testing.assert_close(batch.rewards, torch.tensor([0.5 * len(t) for t in batch.texts]))
    assert batch.stats["reward_rm"] == pytest.approx(sum(len(t) for t in batch.texts) / 6)
    assert batch.stats["reward_syntax"] == 0.0
