"""Shared-prefix forward passes give what plain per-row passes give: values, log-probs and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from text2sql_core.rl.packing import head_outputs, pack_rows, response_logprobs
from text2sql_core.rl.reward_model import add_lora, sequence_classifier_from_policy

SCHEMA = "-- database concert_singer: singer(name, age, country), concert(year, stadium)\n"


@pytest.fixture
def batch(tiny_tokenizer):
    tok = tiny_tokenizer
    questions = ["How many singers?", "Name the oldest singer.", "Which concerts were in 2014?"]
    prompts = [tok(SCHEMA + f"-- {q}\nSQL:")["input_ids"] for q in questions]
    prompts.append(tok("-- other database\n-- q?\nSQL:")["input_ids"])
    answers = [" SELECT count(*) FROM singer", " SELECT name FROM singer ORDER BY age DESC LIMIT 1",
               " SELECT year FROM concert", " SELECT 1"]
    responses = [tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for a in answers]
    width = max(map(len, responses))
    ids = torch.full((4, width), tok.pad_token_id)
    mask = torch.zeros((4, width), dtype=torch.long)
    for i, r in enumerate(responses):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return prompts, ids, mask, ["concert_singer"] * 3 + ["other"]


def plain(prompt, response):
    ids = torch.tensor([prompt + response])
    return ids, len(prompt)


def test_groups_share_the_schema_prefix(batch, tiny_tokenizer):
    prompts, ids, mask, keys = batch
    groups = pack_rows(prompts, ids, mask, keys, tiny_tokenizer.pad_token_id)
    assert [g.rows for g in groups] == [[0, 1, 2], [3]]
    shared = groups[0].prefix_ids.shape[1]
    assert shared > 10 and all(p[:shared] == prompts[0][:shared] for p in prompts[:3])
    assert groups[1].prefix_ids.shape[1] == len(prompts[3]) - 1  # a lone row keeps only its last prompt token
    assert pack_rows(prompts, ids, mask, None, tiny_tokenizer.pad_token_id)[0].rows == [0, 1, 2, 3]


def test_logprobs_match_plain_forward_passes(batch, tiny_policy, tiny_tokenizer):
    prompts, ids, mask, keys = batch
    groups = pack_rows(prompts, ids, mask, keys, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        got, entropy = response_logprobs(tiny_policy, groups, temperature=0.7, with_entropy=True)
        for i in range(4):
            n = int(mask[i].sum())
            full, p = plain(prompts[i], ids[i, :n].tolist())
            logits = tiny_policy(input_ids=full).logits[0, p - 1:-1] / 0.7
            expected = torch.log_softmax(logits, -1).gather(1, full[0, p:, None]).squeeze(1)
            torch.testing.assert_close(got[i, :n], expected, atol=1e-5, rtol=1e-4)
    assert entropy.shape == got.shape and bool((entropy[mask.bool()] > 0).all())


def test_head_outputs_and_gradients_match_plain_forward_passes(batch, tiny_policy, tiny_tokenizer):
    prompts, ids, mask, keys = batch
    torch.manual_seed(0)
    rm = add_lora(sequence_classifier_from_policy(tiny_policy, tiny_tokenizer), r=4, alpha=8, dropout=0.0,
                  target_modules="all-linear", task="SEQ_CLS")
    with torch.no_grad():  # a non-zero adapter, so the gradient check covers LoRA A and B
        for name, p in rm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    twin = copy.deepcopy(rm)
    groups = pack_rows(prompts, ids, mask, keys, tiny_tokenizer.pad_token_id)
    heads = head_outputs(rm, groups)
    heads[mask.bool().nonzero(as_tuple=True)].sum().backward()

    body, score = twin.get_base_model().model, twin.get_base_model().score
    total = 0
    for i in range(4):
        n = int(mask[i].sum())
        full, p = plain(prompts[i], ids[i, :n].tolist())
        values = score(body(input_ids=full).last_hidden_state).squeeze(-1)[0, p - 1:]
        torch.testing.assert_close(heads[i, :n + 1], values, atol=1e-5, rtol=1e-4)
        total = total + values[:n].sum()
    total.backward()
    grads = dict(twin.named_parameters())
    for name, param in rm.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, grads[name].grad, atol=1e-5, rtol=1e-3)
