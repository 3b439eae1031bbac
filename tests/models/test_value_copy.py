"""Value-copy constrained decoding keeps string literals inside the prompt's text."""

from __future__ import annotations

import re

import torch

from text2sql_core.models.tokenizer import train_tokenizer
from text2sql_core.models.value_copy import (
    ValueCopyConstraint,
    allowed_in_literal,
    allowed_in_number,
    numbers_left,
    open_literal,
    open_number,
    question_numbers,
    question_of,
)

CORPUS = [
    "How many offices are in Boston? SELECT count(*) FROM office WHERE city = 'Boston'",
    "Which projects have status Active? SELECT name FROM project WHERE status = 'Active'",
    "Names containing son? SELECT name FROM people WHERE name LIKE '%son%'",
    "Budget between 700000 and 1600000? SELECT name FROM division WHERE budget BETWEEN 700000 AND 1600000",
    "GPA above 3.5? SELECT name FROM student WHERE gpa > 3.5 ORDER BY gpa DESC LIMIT 1",
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


def test_question_numbers_and_what_is_left() -> None:
    q = "Which divisions have budget between 700000 and 1600000 and more than one office, or gpa 2.6?"
    assert set(question_numbers(q)) == {"700000", "1600000", "1", "2.6"}
    assert question_numbers("Offices T1 and B2B in 2002, 2002 again")["2002"] == 2  # identifiers are not numbers
    assert "1" not in question_numbers("T1 x1")
    nums = question_numbers(q)
    assert numbers_left(nums, "SELECT name FROM division WHERE budget BETWEEN 700000 AND ") == {"1600000", "1", "2.6"}
    # the number being written is not used up yet; LIMIT counts and strings do not count
    assert "700000" in numbers_left(nums, "WHERE budget BETWEEN 700000")
    assert "1" in numbers_left(nums, "WHERE name = '1' ORDER BY a LIMIT 1 ")


def test_open_number() -> None:
    assert open_number("WHERE budget > 16") == "16"
    assert open_number("WHERE gpa > 2.") == "2."
    assert open_number("WHERE budget > ") == ""  # a compared number may start here
    assert open_number("WHERE budget BETWEEN 7 AND ") == ""
    assert open_number("WHERE budget BETWEEN ") == ""
    assert open_number("ORDER BY a DESC LIMIT 1") is None  # LIMIT counts are free
    assert open_number("ORDER BY a DESC LIMIT ") is None
    assert open_number("SELECT T1") is None  # an identifier, not a number
    assert open_number("SELECT name FROM t") is None


def test_allowed_in_number() -> None:
    nums = frozenset({"700000", "1600000", "2.6"})
    assert allowed_in_number("16", "0", nums)
    assert not allowed_in_number("16", "1", nums)  # 161... is not a question number
    assert not allowed_in_number("16", " ", nums)  # 16 is not finished
    assert allowed_in_number("1600000", " ", nums) and allowed_in_number("1600000", ")", nums)
    assert allowed_in_number("2", ".", nums) and allowed_in_number("2.", "6", nums)
    assert not allowed_in_number("2.", ")", nums)
    assert allowed_in_number("", "7", nums) and not allowed_in_number("", "5", nums)
    assert allowed_in_number("", " '", nums) and allowed_in_number("", "(", nums)  # not a number: free


def _decode_with_random_scores(tok, prompt: str, prefix: str, seed: int, steps: int = 40) -> str:
    full = prompt + prefix
    ids = tok(full, return_tensors="pt")["input_ids"]
    width = len(tok(prompt)["input_ids"])
    proc = ValueCopyConstraint(tok, [prompt], width)
    generated = ids
    torch.manual_seed(seed)
    digits = [tok.convert_tokens_to_ids(d) for d in "0123456789"]
    for _ in range(steps):
        scores = torch.randn(1, len(tok))
        scores[0, digits] += 4.0  # a model that loves digits: without the constraint it would babble numbers
        nxt = proc(generated, scores).argmax(-1, keepdim=True)
        generated = torch.cat([generated, nxt], dim=1)
    return tok.decode(generated[0, width:], skip_special_tokens=True)


def test_greedy_decoding_copies_numbers_once_each() -> None:
    tok = train_tokenizer(CORPUS, vocab_size=300)
    prompt = "###Input: Which divisions have budget between 450000 and 1300000? ###Response: "
    head = "SELECT name FROM division WHERE budget BETWEEN "
    for seed in range(5):
        first = re.match(r"\d+", _decode_with_random_scores(tok, prompt, head, seed)[len(head):])
        assert first and first.group() in {"450000", "1300000"}
        # the second number must be the other one of the question
        second_head = f"{head}{first.group()} AND "
        second = re.match(r"\d+", _decode_with_random_scores(tok, prompt, second_head, seed)[len(second_head):])
        assert second and {first.group(), second.group()} == {"450000", "1300000"}


def test_numbers_step_aside_when_the_question_has_none() -> None:
    tok = train_tokenizer(CORPUS, vocab_size=300)
    prompt = "###Input: Which division has the highest budget? ###Response: "
    text = _decode_with_random_scores(tok, prompt, "SELECT name FROM division WHERE budget > ", 0, steps=6)
    unconstrained = re.search(r"> (\d+)", text)
    assert unconstrained is None or unconstrained.group(1)  # any number may be written
    proc = ValueCopyConstraint(tok, [prompt], 0)
    assert proc.blocked_in_number("", frozenset()) is None
    assert proc.blocked_in_number("5", frozenset({"700"})) is None  # not a question number's start: step aside
