"""Value-copy constrained decoding keeps string literals inside the prompt's text."""

from __future__ import annotations

import re

import torch

from text2sql_core.models.tokenizer import train_tokenizer
from text2sql_core.models.value_copy import ValueCopyConstraint, allowed_in_literal, open_literal, question_of

CORPUS = [
    "How many offices are in Boston? SELECT count(*) FROM office WHERE city = 'Boston'",
    "Which projects have status Active? SELECT name FROM project WHERE status = 'Active'",
    "Names containing son? SELECT name FROM people WHERE name LIKE '%son%'",
] * 20


def test_open_literal() -> None:
    assert open_literal("SELECT a FROM t WHERE b = 'Atl") == ("'", "Atl")
    assert open_literal("SELECT a FROM t WHERE b = 'Atlanta'") is None
    assert open_literal("WHERE b = 'O''Hare") == ("'", "O''Hare")
    assert open_literal('WHERE b = "x') == ('"', "x")
    assert open_literal("SELECT count(*) FROM t") is None
    assert open_literal("WHERE name LIKE '%so") == ("'", "%so")


def test_allowed_in_literal() -> None:
    src = "Which offices are in Atlanta? Names containing son"
    assert allowed_in_literal("Atl", "anta", "'", src)
    assert allowed_in_literal("Atlanta", "'", "'", src)
    assert allowed_in_literal("Atlanta", "')", "'", src)
    assert not allowed_in_literal("Atl", "ox", "'", src)
    assert not allowed_in_literal("atl", "anta", "'", src)  # copied as written
    assert not allowed_in_literal("", "'", "'", src)  # an empty literal is not a value
    assert not allowed_in_literal("Atl", "'", "'", src)  # a literal ends at a word boundary
    assert not allowed_in_literal("", "tlanta", "'", src)  # and starts at one
    assert not allowed_in_literal("in", " '", "'", src)  # without a trailing space
    assert allowed_in_literal("%so", "n%'", "'", src, like=True)  # LIKE wildcards at the ends are free
    assert allowed_in_literal("%", "tlan%'", "'", src, like=True)  # and lift the boundary on their side
    assert not allowed_in_literal("%so", "n%'", "'", src)  # but only in a LIKE pattern
    assert not allowed_in_literal("%son%", "%", "'", src, like=True)  # one at each end
    assert not allowed_in_literal("%son%", "s", "'", src, like=True)  # and nothing after the closing one
    assert not allowed_in_literal("", " Atlanta", "'", src)  # no leading space


def test_question_of() -> None:
    prompt = "Table office has columns city\n###Input:\nWhich offices are in Atlanta?\n\n###Response:"
    assert question_of(prompt).strip() == "Which offices are in Atlanta?"
    assert question_of("no markers Here") == "no markers Here"


def test_greedy_decoding_copies_an_unseen_value() -> None:
    tok = train_tokenizer(CORPUS, vocab_size=300)
    prompt = "Table office has columns name, city. ###Input: Which offices are in Atlanta? ###Response: " \
             "SELECT name FROM office WHERE city = '"
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    width = ids.shape[1] - len(tok(" '", add_special_tokens=False)["input_ids"])
    proc = ValueCopyConstraint(tok, [prompt], width)
    generated = ids
    torch.manual_seed(0)
    closed = False
    for _ in range(60):
        scores = torch.randn(1, len(tok))  # an untrained model: any token could win
        scores = proc(generated, scores)
        nxt = scores.argmax(-1, keepdim=True)
        generated = torch.cat([generated, nxt], dim=1)
        text = tok.decode(generated[0, width:], skip_special_tokens=True)
        if open_literal(text) is None:
            closed = True
            break
    literal = text.split("'")[1]
    # from the question (never the schema or the SQL), starting at a word, and ending at one once closed
    end = r"(?!\w)" if closed else ""
    assert literal and re.search(rf"(?<!\w){re.escape(literal)}{end}", "Which offices are in Atlanta?")


def test_no_constraint_outside_literals_or_for_unknown_values() -> None:
    tok = train_tokenizer(CORPUS, vocab_size=300)
    prompt = "How many offices? SELECT count(*) FROM office"
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    proc = ValueCopyConstraint(tok, [prompt], ids.shape[1] - 2)
    scores = torch.randn(1, len(tok))
    assert torch.equal(proc(ids, scores.clone()), scores)
    assert proc.allowed("zzz", "'", prompt) is None
