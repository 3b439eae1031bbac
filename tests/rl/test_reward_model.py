"""Reward-model pieces: encoding, scoring at the last real token, the pairwise loss, the head on the SFT body."""

from __future__ import annotations

import math

import pytest
import torch

from text2sql_core.rl.reward_model import (
    add_lora,
    collate_responses,
    encode_response,
    pair_scores,
    pairwise_accuracy,
    pairwise_loss,
    score_texts,
    sequence_classifier_from_policy,
)


def test_encode_response_cuts_the_prompt_beginning_and_keeps_the_response(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt, answer = "-- concert_singer\n-- How many singers?\nSQL:", " SELECT count(*) FROM singer"
    full_prompt, full_response = encode_response(tok, prompt, answer, 512)
    assert full_prompt[0] == tok.bos_token_id and full_response[-1] == tok.eos_token_id
    assert full_response[:-1] == tok(answer, add_special_tokens=False)["input_ids"]
    short_prompt, short_response = encode_response(tok, prompt, answer, 12)
    assert len(short_prompt) + len(short_response) == 12
    assert short_response == full_response and short_prompt == full_prompt[-len(short_prompt):]


def test_collate_responses_pads_right():
    ids, mask = collate_responses([[5, 6, 7], [8]], pad_token_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_pairwise_loss_by_hand():
    loss = pairwise_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1.0)) + math.log(2.0)) / 2)


def test_classifier_reuses_the_policy_body(tiny_policy, tiny_tokenizer):
    rm = sequence_classifier_from_policy(tiny_policy, tiny_tokenizer)
    ids = torch.tensor([[1, 20, 30, 40]])
    with torch.no_grad():
        torch.testing.assert_close(rm.model(input_ids=ids).last_hidden_state,
                                   tiny_policy.model(input_ids=ids).last_hidden_state)
    assert rm.config.num_labels == 1 and rm.score.out_features == 1


def test_scores_do_not_depend_on_padding_or_batch_mates(tiny_policy, tiny_tokenizer):
    rm = sequence_classifier_from_policy(tiny_policy, tiny_tokenizer).eval()
    prompt = "-- pets_1\n-- How many pets?\nSQL:"
    with torch.no_grad():
        alone = score_texts(rm, tiny_tokenizer, [prompt], [" SELECT count(*) FROM pets"], 256)
        batched = score_texts(rm, tiny_tokenizer, [prompt, prompt, "-- other\nSQL:"],
                              [" SELECT count(*) FROM pets", " SELECT count(*) FROM pets WHERE weight > 10 AND age < 3",
                               " SELECT 1"], 256)
        # the score is the classifier head at the response's last token (its EOS) of the plain sequence
        p, r = encode_response(tiny_tokenizer, prompt, " SELECT count(*) FROM pets", 256)
        plain = rm.score(rm.model(input_ids=torch.tensor([p + r])).last_hidden_state)[0, -1, 0]
    torch.testing.assert_close(alone[0], batched[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone[0], plain, atol=1e-5, rtol=1e-5)


def test_lora_reward_model_learns_a_preference(tiny_policy, tiny_tokenizer):
    """A few steps of the pairwise loss separate chosen from rejected on the training pairs."""
    rm = add_lora(sequence_classifier_from_policy(tiny_policy, tiny_tokenizer), r=4, alpha=8, dropout=0.0,
                  target_modules="all-linear", task="SEQ_CLS")
    pairs = [{"prompt": f"-- q{i}\nSQL:", "chosen": f" SELECT name FROM singer WHERE age > {i}",
              "rejected": f" SELECT name FROM singer WHERE age < {i}"} for i in range(6)]
    before = pairwise_accuracy(rm, tiny_tokenizer, pairs, 128)
    opt = torch.optim.AdamW([p for p in rm.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(12):
        rc, rr = pair_scores(rm, tiny_tokenizer, pairs, 128)
        loss = pairwise_loss(rc, rr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = pairwise_accuracy(rm, tiny_tokenizer, pairs, 128)
    assert after["accuracy"] == 1.0 and after["margin"] > before["margin"] + 1.0
    assert set(after) == {"accuracy", "margin", "chosen", "rejected", "pairs"}
    tagged = [{**p, "origin": "model" if i < 2 else "perturb:flip_comparison"} for i, p in enumerate(pairs)]
    tagged[0] = {**tagged[0], "rejected": tagged[0]["chosen"]}  # a tie counts as wrong
    by_origin = pairwise_accuracy(rm, tiny_tokenizer, tagged, 128)["by_origin"]
    assert by_origin == {"model": {"accuracy": 0.5, "pairs": 2}, "perturb:flip_comparison": {"accuracy": 1.0, "pairs": 4}}
