"""SQL clean-up, the stop rule, and batched left-padded generation."""

from __future__ import annotations

import pytest
import torch

from text2sql_core.models.config import TinyModelConfig
from text2sql_core.models.generation import (
    EMPTY_PREDICTION,
    clean_sql,
    encode_prompts,
    generate,
    statement_complete,
)
from text2sql_core.models.tiny import build_tiny_model
from text2sql_core.models.tokenizer import train_tokenizer


@pytest.mark.parametrize("raw, sql", [
    ("SELECT name FROM singer", "SELECT name FROM singer"),
    ("  SELECT name\n", "SELECT name"),
    ("SELECT a FROM t; SELECT b FROM t;", "SELECT a FROM t"),
    ("```sql\nSELECT a\nFROM t\nWHERE x = 1;\n```\nThis query ...", "SELECT a FROM t WHERE x = 1"),
    ("Here you go:\n```\nSELECT count(*) FROM t\n```", "SELECT count(*) FROM t"),
    ("SELECT name FROM t WHERE name = 'a;  b' ; DROP TABLE t", "SELECT name FROM t WHERE name = 'a;  b'"),
    ("SELECT 'it''s;' FROM t", "SELECT 'it''s;' FROM t"),
    ("SELECT a ,   b FROM t\nExplanation: blah", "SELECT a , b FROM t"),
    ("", EMPTY_PREDICTION),
    ("  ;  ", EMPTY_PREDICTION),
    ("```sql\n```", EMPTY_PREDICTION),
])
def test_clean_sql(raw: str, sql: str) -> None:
    assert clean_sql(raw) == sql


@pytest.mark.parametrize("text, done", [
    ("SELECT a FROM t", False),
    ("SELECT a FROM t;", True),
    ("SELECT a FROM t WHERE b = 'x;", False),  # inside a literal
    ("\nSELECT a", False),  # a leading newline is not the end
    ("SELECT a\n", True),
    ("```sql\nSELECT a\nFROM t", False),  # multi-line SQL in a fence goes on
    ("```sql\nSELECT a\nFROM t\n```", True),
])
def test_statement_complete(text: str, done: bool) -> None:
    assert statement_complete(text) is done


@pytest.fixture(scope="module")
def tiny():
    texts = ["Question: how many singers?\nSQL: SELECT count(*) FROM singer;",
             "Question: list names\nSQL: SELECT name FROM singer\n"] * 20
    tok = train_tokenizer(texts, 400)
    cfg = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=400, seed=1)
    return build_tiny_model(cfg, tok), tok


def test_batched_left_padded_generation_matches_one_by_one(tiny) -> None:
    model, tok = tiny
    prompts = ["Question: how many singers?\nSQL:", "Question: list names\nSQL: SELECT", "Q"]
    batched = generate(model, tok, prompts, batch_size=3, max_new_tokens=12)
    single = [generate(model, tok, [p], batch_size=1, max_new_tokens=12)[0] for p in prompts]
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    for g in batched:
        assert g.sql == clean_sql(g.raw)
        # each row stopped at its first complete statement or ran to the token budget
        assert statement_complete(g.raw) or len(g.token_ids) == 12 or g.token_ids[-1] == tok.eos_token_id


def test_sampling_is_seeded_and_greedy_is_deterministic(tiny) -> None:
    model, tok = tiny
    prompts = ["Question: how many singers?\nSQL:"] * 4
    g1 = generate(model, tok, prompts, max_new_tokens=8)
    assert len({g.token_ids for g in g1}) == 1
    torch.manual_seed(0)
    s1 = generate(model, tok, prompts, max_new_tokens=8, do_sample=True, temperature=1.5, top_p=1.0)
    torch.manual_seed(0)
    s2 = generate(model, tok, prompts, max_new_tokens=8, do_sample=True, temperature=1.5, top_p=1.0)
    assert [g.token_ids for g in s1] == [g.token_ids for g in s2]
    assert len({g.token_ids for g in s1}) > 1  # a random model at temperature 1.5 does not repeat itself


def test_beam_candidates_come_best_first(tiny) -> None:
    model, tok = tiny
    prompts = ["Question: how many singers?\nSQL:", "Question: list names\nSQL: SELECT"]
    beams = generate(model, tok, prompts, max_new_tokens=8, num_candidates=3, copy_values=True)
    for g in beams:
        assert len(g.candidates) == 3
        assert (g.candidates[0].raw, g.candidates[0].sql) == (g.raw, g.sql)
        assert all(c.sql == clean_sql(c.raw) for c in g.candidates)
        assert len({c.raw for c in g.candidates}) > 1  # distinct beams
    assert generate(model, tok, prompts, max_new_tokens=8)[0].candidates == ()  # greedy: no beams


def test_encode_prompts_left_pads_and_cuts_from_the_left(tiny) -> None:
    _model, tok = tiny
    enc = encode_prompts(tok, ["Question: list names\nSQL:", "Q"], max_source_length=5)
    assert enc["input_ids"].shape[1] == 5
    assert enc["attention_mask"][1, 0] == 0 and enc["attention_mask"][1, -1] == 1
    assert tok.decode(enc["input_ids"][0], skip_special_tokens=True).endswith("SQL:")
    assert tok.padding_side == "right"  # the caller's tokenizer settings are restored


SCHEMA = ("Translate the question into SQL for this database.\nTables: singer(singer_id, name, country, age), "
          "concert(concert_id, name, year, stadium_id), stadium(stadium_id, location, capacity)\n")


def test_a_batch_sharing_a_schema_prefix_runs_it_once_with_the_same_outputs(tiny) -> None:
    from text2sql_core.models.generation import _shared_prefix_inputs

    model, tok = tiny
    prompts = [SCHEMA + q for q in ("Question: how many singers?\nSQL:", "Question: list names\nSQL: SELECT",
                                    "Question: the oldest singer of each country, by age?\nSQL:", "Q: x\nSQL:")]
    enc = encode_prompts(tok, prompts, 512)
    shared = _shared_prefix_inputs(model, enc, tok.pad_token_id)
    assert shared is not None  # the prefix is long enough to be worth its own pass
    assert shared["input_ids"].shape == enc["input_ids"].shape
    assert bool((shared["attention_mask"].sum(-1) == enc["attention_mask"].sum(-1)).all())
    for kwargs in ({}, {"do_sample": True, "temperature": 1.5, "seed": 3}, {"copy_values": True}):
        plain = generate(model, tok, prompts, batch_size=4, max_new_tokens=12, share_prefix=False, **kwargs)
        fast = generate(model, tok, prompts, batch_size=4, max_new_tokens=12, **kwargs)
        assert [(g.raw, g.token_ids) for g in fast] == [(g.raw, g.token_ids) for g in plain], kwargs
    # rows with nothing in common run as before
    assert _shared_prefix_inputs(model, encode_prompts(tok, ["Q", "SELECT a"], 8), tok.pad_token_id) is None
