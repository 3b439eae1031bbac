"""PPO under constrained decoding: what sampling forbade is recorded, and scoring renormalises over the rest."""

from __future__ import annotations

import math

import pytest
import torch

from text2sql_core.rl.constrained import RecordingProcessor, TokenConstraints
from text2sql_core.rl.losses import entropy_from_logits
from text2sql_core.rl.packing import pack_rows, response_logprobs


def constraints(rows, positions, allowed):
    return TokenConstraints(torch.tensor(rows), torch.tensor(positions), torch.tensor(allowed, dtype=torch.bool))


def test_apply_masks_only_the_recorded_positions():
    logits = torch.zeros(2, 3, 4, requires_grad=True)
    c = constraints([1], [2], [[True, False, True, False]])
    out = c.apply(logits)
    assert out[1, 2].tolist() == [0.0, -math.inf, 0.0, -math.inf]
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[1, :2]).all()
    # renormalised over the two allowed tokens: log(1/2) instead of log(1/4)
    logp = torch.log_softmax(out, -1)
    assert logp[1, 2, 0].item() == pytest.approx(math.log(0.5))
    assert logp[0, 0, 0].item() == pytest.approx(math.log(0.25))
    logp[1, 2, 0].backward()  # autograd flows through the masked copy
    assert logits.grad is not None and logits.grad[1, 2, 1].item() == 0.0


def test_select_renumbers_rows_and_truncate_drops_padding():
    c = constraints([0, 2, 2, 3], [0, 1, 5, 0], [[True, False]] * 4)
    picked = c.select([3, 2])  # rows 3 and 2 of the batch become rows 0 and 1
    assert picked.rows.tolist() == [1, 1, 0] and picked.positions.tolist() == [1, 5, 0]
    assert len(c.select([1])) == 0
    mask = torch.tensor([[1, 0, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]])
    kept = c.truncate(3, mask)  # position 5 is past the response; (2, 1) is padding after EOS
    assert list(zip(kept.rows.tolist(), kept.positions.tolist(), strict=True)) == [(0, 0), (3, 0)]


def test_entropy_ignores_masked_tokens():
    logits = torch.tensor([[[0.0, 0.0, -math.inf, -math.inf]]])
    assert entropy_from_logits(logits).item() == pytest.approx(math.log(2))


class BlockTokens:
    """A logits processor that forbids fixed tokens at every step (stands in for the value-copy constraint)."""

    def __init__(self, blocked):
        self.blocked = blocked

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.blocked] = -math.inf
        return scores


def test_recorded_sampling_is_scored_as_the_constrained_policy(tiny_policy, tiny_tokenizer):
    tok = tiny_tokenizer
    prompts = [tok("-- singer(name, age)\n-- How many singers?\nSQL:")["input_ids"],
               tok("-- singer(name, age)\n-- Oldest singer?\nSQL:")["input_ids"]]
    width = max(map(len, prompts))
    ids = torch.full((2, width), tok.pad_token_id)
    attention = torch.zeros((2, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        attention[i, width - len(p):] = 1
    vocab = tiny_policy.get_output_embeddings().weight.shape[0]
    blocked = [t for t in range(vocab) if t % 3 == 0 and t != tok.eos_token_id]
    recorder = RecordingProcessor(BlockTokens(blocked), width)
    torch.manual_seed(0)
    out = tiny_policy.generate(input_ids=ids, attention_mask=attention, do_sample=True, top_k=0, max_new_tokens=6,
                               logits_processor=[recorder], pad_token_id=tok.pad_token_id,
                               eos_token_id=tok.eos_token_id)
    responses = out[:, width:]
    mask = torch.ones_like(responses)
    c = recorder.constraints().truncate(responses.shape[1], mask)
    assert len(c) == responses.numel()  # every step of both rows was constrained
    assert not any(t in blocked for t in responses.flatten().tolist())
    assert (c.allowed.sum(1) == vocab - len(blocked)).all()

    groups = pack_rows(prompts, responses, mask, None, tok.pad_token_id)
    with torch.no_grad():
        plain, _ = response_logprobs(tiny_policy, groups)
        got, entropy = response_logprobs(tiny_policy, groups, with_entropy=True, constraints=c)
        for i, p in enumerate(prompts):  # a plain pass per row, without padding
            logits = tiny_policy(input_ids=torch.tensor([p + responses[i].tolist()])).logits[0, len(p) - 1:-1]
            logits[:, blocked] = -math.inf
            expected = torch.log_softmax(logits, -1).gather(1, responses[i, :, None]).squeeze(-1)
            torch.testing.assert_close(got[i], expected, atol=1e-5, rtol=1e-4)
    assert bool((got > plain).all())  # mass of the forbidden tokens is given to the allowed ones
    assert torch.isfinite(entropy).all()
