"""Completion-only loss with a shared prompt prefix: the same loss and gradients as plain training."""

from __future__ import annotations

import pytest
import torch

from text2sql_core.models.batching import (
    IGNORE_INDEX,
    PlannedBatch,
    collate,
    completion_loss,
    encode_example,
    encode_examples,
    plan_batches,
)
from text2sql_core.models.config import TinyModelConfig
from text2sql_core.models.tiny import build_tiny_model
from text2sql_core.models.tokenizer import train_tokenizer

SCHEMAS = {
    "shop": "shop contains tables such as product, supplier. Table product has columns such as product_id, "
            "name, price. product_id is the primary key.\n",
    "school": "school contains tables such as student. Table student has columns such as student_id, name, "
              "age, home_city.\n",
}
QUESTIONS = [("shop", "How many products cost more than 12?", "SELECT count(*) FROM product WHERE price > 12"),
             ("shop", "List product names.", "SELECT name FROM product"),
             ("shop", "What is the highest price?", "SELECT max(price) FROM product"),
             ("school", "Which students live in Oslo?", "SELECT name FROM student WHERE home_city = 'Oslo'"),
             ("school", "How old is the oldest student?", "SELECT max(age) FROM student")]


def _pairs() -> list[tuple[str, str, str]]:
    return [(db, f"##Instruction:\n{SCHEMAS[db]}###Input:\n{q}\n\n###Response:", sql) for db, q, sql in QUESTIONS]


@pytest.fixture(scope="module")
def setup():
    pairs = _pairs()
    tok = train_tokenizer([p + s for _, p, s in pairs] * 3, 400)
    cfg = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=400)
    model = build_tiny_model(cfg, tok).double()
    examples = [encode_example(tok, p, s, max_source_length=512, max_target_length=64) for _, p, s in pairs]
    return tok, model, examples, [db for db, _, _ in pairs]


def _reference_loss(model, examples) -> torch.Tensor:
    """Token-weighted mean of Hugging Face's own loss, one unpadded example at a time."""
    total, count = 0.0, 0
    for e in examples:
        ids = torch.tensor([e.input_ids])
        labels = ids.clone()
        labels[0, : e.prompt_len] = IGNORE_INDEX
        total = total + model(input_ids=ids, labels=labels).loss * (e.completion_len)
        count += e.completion_len
    return total / count


def test_shared_prefix_batch_gives_the_plain_loss_and_gradients(setup) -> None:
    tok, model, examples, groups = setup
    plan = plan_batches(examples, batch_size=3, num_batches=2, seed=0, groups=groups)
    shop = next(b for b in plan if len(b.examples) == 3)
    assert shop.prefix_len > 20  # instruction + schema are shared, not re-run per row
    params = list(model.parameters())
    ref = _reference_loss(model, shop.examples)
    g_ref = torch.autograd.grad(ref, params)
    for batch in (shop, PlannedBatch(shop.examples, 0)):
        loss = completion_loss(model, collate(batch, tok.pad_token_id))
        grads = torch.autograd.grad(loss, params)
        assert torch.allclose(loss, ref, atol=1e-10)
        assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-8) for a, b in zip(grads, g_ref, strict=True))


def test_collate_masks_prompt_and_padding(setup) -> None:
    tok, _model, examples, _ = setup
    batch = collate(PlannedBatch(tuple(examples[:2]), 0), tok.pad_token_id)
    short = 1 if len(examples[1].input_ids) < len(examples[0].input_ids) else 0
    row_mask, row_labels = batch["attention_mask"][short], batch["labels"][short]
    pad = batch["input_ids"].shape[1] - len(examples[short].input_ids)
    assert pad > 0 and row_mask[:pad].sum() == 0 and row_mask[pad:].all()  # left padding
    assert batch["position_ids"][short, pad] == 0  # positions start at the first real token
    n_labels = int(row_labels.ne(IGNORE_INDEX).sum())
    assert n_labels == examples[short].completion_len
    assert row_labels[-1] == tok.eos_token_id  # the completion ends with </s>, which is learnt too


def test_plan_is_deterministic_grouped_and_covers_each_epoch(setup) -> None:
    _tok, _model, examples, groups = setup
    a = plan_batches(examples, batch_size=2, num_batches=7, seed=1, groups=groups)
    b = plan_batches(examples, batch_size=2, num_batches=7, seed=1, groups=groups)
    assert a == b and len(a) == 7
    assert a != plan_batches(examples, batch_size=2, num_batches=7, seed=2, groups=groups)
    index = {e: i for i, e in enumerate(examples)}
    for batch in a:
        assert len({groups[index[e]] for e in batch.examples}) == 1
    # the first epoch: shop (3) -> 2 batches, school (2) -> 1 batch, every example once
    first = [index[e] for batch in a[:3] for e in batch.examples]
    assert sorted(first) == list(range(len(examples)))


def test_batched_encoding_equals_one_by_one(setup) -> None:
    tok, _model, examples, _ = setup
    pairs = [(p, s) for _, p, s in _pairs()]
    assert encode_examples(tok, pairs, max_source_length=512, max_target_length=64) == examples
    short = encode_examples(tok, pairs, max_source_length=12, max_target_length=4)
    assert short == [encode_example(tok, p, s, max_source_length=12, max_target_length=4) for p, s in pairs]


def test_truncation_keeps_the_question_and_bos(setup) -> None:
    tok, _model, _examples, _ = setup
    _db, prompt, sql = _pairs()[0]
    e = encode_example(tok, prompt, sql, max_source_length=12, max_target_length=4)
    assert e.prompt_len == 12 and e.input_ids[0] == tok.bos_token_id
    assert tok.decode(e.input_ids[: e.prompt_len], skip_special_tokens=True).endswith("###Response:")
    assert e.completion_len == 4 and tok.eos_token_id not in e.input_ids[e.prompt_len:]  # cut SQL has no </s>


def test_plan_uses_variants_and_keeps_the_shared_prefix_exact(setup) -> None:
    tok, model, examples, groups = setup
    pairs = _pairs()

    def variant(i, rng):
        _db, prompt, sql = pairs[i]
        if rng.random() < 0.5:
            return None
        return prompt.replace("###Input:\n", "###Input:\nPlease: "), sql + " LIMIT 1"

    def encode(batch):
        return encode_examples(tok, batch, max_source_length=512, max_target_length=64)

    plan = plan_batches(examples, batch_size=3, num_batches=6, seed=3, groups=groups, variant=variant,
                        encode=encode)
    rewritten = [e for b in plan for e in b.examples if e not in examples]
    assert rewritten and len(rewritten) < sum(len(b.examples) for b in plan)
    for b in plan:
        head = b.examples[0].input_ids[: b.prefix_len]
        assert all(e.input_ids[: b.prefix_len] == head and e.prompt_len > b.prefix_len for e in b.examples)
        loss = completion_loss(model, collate(b, tok.pad_token_id))
        assert torch.allclose(loss, _reference_loss(model, b.examples), atol=1e-10)
