"""The DPO loop on a random tiny Llama: answer-only packed log-probs, reference = adapter off, learning, resume."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from text2sql_core.rl.dpo.config import DPOConfig
from text2sql_core.rl.dpo.trainer import DPOTrainer
from text2sql_core.rl.reward_model import add_lora


def _pairs(rows, n=6):
    """chosen = the row's gold SQL, rejected = another question's SQL on the same prompt."""
    return [{"prompt": r["prompt"], "chosen": r["query"], "rejected": rows[(i + 3) % len(rows)]["query"],
             "db_id": r["db_id"], "origin": "model" if i % 2 else "perturb:column", "index": i}
            for i, r in enumerate(rows[:n])]


def make_trainer(policy, tokenizer, pairs, **overrides):
    torch.manual_seed(1)
    lora = add_lora(policy, r=4, alpha=8, dropout=0.0, target_modules="all-linear", task="CAUSAL_LM").eval()
    settings = {"batch_size": 4, "learning_rate": 1e-2, "max_new_tokens": 64, "eval_batch_size": 3, **overrides}
    return DPOTrainer(lora, tokenizer, pairs, DPOConfig(**settings), eval_pairs=pairs[:3], seed=5)


def _plain_answer_logprob(model, tokenizer, prompt: str, answer: str) -> float:
    """Sum of log p(answer token | everything before it) from one unpadded forward pass over prompt + answer."""
    p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    a = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([p + a])
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    return sum(float(logp[len(p) - 1 + i, t]) for i, t in enumerate(a))


def test_sequence_logprobs_count_answer_tokens_only_whatever_the_batch(tiny_policy, tiny_tokenizer, spider_rows):
    pairs = _pairs(spider_rows)
    frozen = copy.deepcopy(tiny_policy)
    trainer = make_trainer(tiny_policy, tiny_tokenizer, pairs)
    alone = trainer.encode(pairs[:1])
    together = trainer.encode(pairs[:4])  # longer prompts and answers: other padding, other packing
    with torch.no_grad():
        _, seq_alone = trainer.logprobs(alone)
        _, seq_together = trainer.logprobs(together)
    expected = [_plain_answer_logprob(frozen, tiny_tokenizer, pairs[0]["prompt"], pairs[0][k])
                for k in ("chosen", "rejected")]
    # rows are the chosen answers first, then the rejected ones
    assert [seq_alone[0].item(), seq_alone[1].item()] == pytest.approx(expected, abs=1e-4)
    assert [seq_together[0].item(), seq_together[4].item()] == pytest.approx(expected, abs=1e-4)
    assert together.mask.shape[0] == 8 and together.mask.sum(1).min() >= 1


def test_first_step_starts_at_the_reference_and_the_margin_grows(tiny_policy, tiny_tokenizer, spider_rows):
    pairs = _pairs(spider_rows)
    trainer = make_trainer(tiny_policy, tiny_tokenizer, pairs, max_steps=8, eval_steps=8)
    first = trainer.step()
    # a fresh LoRA (B = 0) is the reference itself: every implicit reward is exactly 0 and the loss log 2
    assert first["rewards_chosen"] == first["rewards_rejected"] == first["margin"] == 0.0
    assert first["dpo_loss"] == pytest.approx(0.6931472, abs=1e-6)
    records = [trainer.step() for _ in range(7)]
    held = trainer.evaluate_pairs(pairs)
    assert held["margin"] > 0.2 and held["accuracy"] == 1.0, held
    assert records[-1]["margin"] > records[0]["margin"] > 0
    assert records[-1]["rewards_chosen"] > 0 > records[-1]["rewards_rejected"]
    assert set(held["by_origin"]) == {"model", "perturb:column"}
    assert "eval_accuracy" in records[-1] and "eval_accuracy" not in records[-2]  # eval_steps: 8


def test_reference_stays_the_sft_policy_and_only_the_adapter_trains(tiny_policy, tiny_tokenizer, spider_rows):
    pairs = _pairs(spider_rows)
    frozen = copy.deepcopy(tiny_policy)
    trainer = make_trainer(tiny_policy, tiny_tokenizer, pairs, rpo_alpha=1.0)
    for _ in range(3):
        record = trainer.step()
    assert record["nll_chosen"] > 0
    batch = trainer.encode(pairs)
    with torch.no_grad():
        _, reference = trainer.logprobs(batch, reference=True)
        _, moved = trainer.logprobs(batch)
        expected, _ = response_logprobs_of(frozen, batch)
    torch.testing.assert_close(reference, expected)
    assert not torch.allclose(moved, expected, atol=1e-3)
    base = dict(frozen.named_parameters())
    for name, p in trainer.policy.get_base_model().named_parameters():
        if "lora_" not in name:
            torch.testing.assert_close(p, base[name.replace(".base_layer", "")])


def response_logprobs_of(model, batch):
    from text2sql_core.rl.losses import sequence_logprobs
    from text2sql_core.rl.packing import response_logprobs

    tokens, _ = response_logprobs(model, batch.groups)
    return sequence_logprobs(tokens, batch.mask), tokens


def test_batch_plan_is_seeded_and_resume_is_exact(tiny_policy, tiny_tokenizer, spider_rows, tmp_path):
    pairs = _pairs(spider_rows)
    trainer = make_trainer(copy.deepcopy(tiny_policy), tiny_tokenizer, pairs)
    plan = [[p["index"] for p in trainer.batch_for_step(s)] for s in range(3)]
    # 6 pairs, 4 per step: epoch 0 is one permutation of all six, then epoch 1 begins
    assert sorted(plan[0] + plan[1][:2]) == list(range(6))
    for _ in range(2):
        trainer.step()
    trainer.save(tmp_path / "ckpt")
    continued = [trainer.step() for _ in range(2)]

    resumed = make_trainer(copy.deepcopy(tiny_policy), tiny_tokenizer, pairs)
    assert [[p["index"] for p in resumed.batch_for_step(s)] for s in range(3)] == plan
    resumed.load(tmp_path / "ckpt")
    assert resumed.global_step == 2 and resumed.optimizer_steps() == 2
    again = [resumed.step() for _ in range(2)]
    for a, b in zip(continued, again, strict=True):
        assert a["step"] == b["step"]
        for key in ("loss", "margin", "rewards_chosen", "rewards_rejected"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert [r["step"] for r in resumed.history] == [1, 2, 3, 4]
