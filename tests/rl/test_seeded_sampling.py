"""Sampling seeded per row: a row's draws depend on its seed and logits, never on the rows beside it."""

from __future__ import annotations

import pytest
import torch

from text2sql_core.models.generation import encode_prompts
from text2sql_core.rl.rollout import SeededRowSampler, row_seed, sample_responses


def test_draws_follow_the_tempered_nucleus_distribution() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf")]])
    n = 4000
    counts = torch.zeros(5)
    for s in range(n):
        out = SeededRowSampler([s], temperature=2.0)(None, logits)
        assert int(torch.isfinite(out).sum()) == 1  # one token kept: greedy decoding emits it
        counts[out.argmax()] += 1
    expected = torch.softmax(logits / 2.0, dim=-1)[0]
    assert counts[4] == 0  # a forbidden token is never drawn
    assert torch.allclose(counts / n, expected, atol=0.025), (counts / n, expected)
    # top_p 0.8: the most likely tokens whose mass reaches 0.8 (0.64 + 0.24: the first two)
    kept = {int(SeededRowSampler([s], top_p=0.8)(None, logits).argmax()) for s in range(300)}
    assert kept == {0, 1}


def test_a_row_samples_the_same_tokens_alone_or_in_any_batch(tiny_policy, tiny_tokenizer, spider_rows) -> None:
    prompts = [r["prompt"] for r in spider_rows[:4]]
    seeds = [row_seed(7, 2, r) for r in range(4)]

    def sample(rows: list[int]) -> list[list[int]]:
        enc = encode_prompts(tiny_tokenizer, [prompts[i] for i in rows], 256, torch.device("cpu"))
        torch.manual_seed(len(rows))  # the global RNG plays no part
        ids, mask, _ = sample_responses(tiny_policy, tiny_tokenizer, enc["input_ids"], enc["attention_mask"],
                                        max_new_tokens=8, row_seeds=[seeds[i] for i in rows])
        return [[t for t, m in zip(row, keep, strict=True) if m] for row, keep in zip(ids.tolist(), mask.tolist(),
                                                                                      strict=True)]

    together = sample([0, 1, 2, 3])
    assert sample([2, 3]) == together[2:]  # the second rank's half of the batch
    assert sample([1]) == [together[1]]
    assert len({tuple(r) for r in together}) > 1
    with pytest.raises(ValueError, match="3 rows to sample but 2 row seeds"):
        SeededRowSampler([1, 2])(None, torch.zeros((3, 5)))
