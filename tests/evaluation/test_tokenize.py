"""The tokenizer decides which queries the official parser accepts: its NLTK quirks are part of EM."""

from __future__ import annotations

import random
import re

import pytest

from text2sql_core.evaluation.tokenize import TokenizeError, spider_tokenize, word_split


@pytest.mark.parametrize(("sql", "tokens"), [
    # values stay whole, in double quotes, with their case; everything else is lower-cased
    ("SELECT name FROM singer WHERE country = 'France'",
     ["select", "name", "from", "singer", "where", "country", "=", '"France"']),
    ('SELECT a FROM t WHERE b LIKE "%Hey %"', ["select", "a", "from", "t", "where", "b", "like", '"%Hey %"']),
    # parentheses, * and < > are split off; a comma before a non-digit too
    ("SELECT count(*),max(T1.age) FROM t", ["select", "count", "(", "*", ")", ",", "max", "(", "t1.age", ")",
                                            "from", "t"]),
    # "! =" / "> =" and unspaced operators are joined back into one token, unless "=" sticks to the value
    ("a >= 1 AND b ! = 2 AND c<= 3 AND d<=4", ["a", ">=", "1", "and", "b", "!=", "2", "and", "c", "<=", "3",
                                               "and", "d", "<", "=4"]),
    # "=" is never split: "a=1" stays one token (the official parser then rejects it)
    ("WHERE a=1", ["where", "a=1"]),
    # a comma before a digit is kept, so "IN (1,2)" yields one "1,2" token
    ("IN (1,2)", ["in", "(", "1,2", ")"]),
    # "<>" is two tokens, and not joined
    ("a <> 1", ["a", "<", ">", "1"]),
    # a period is split only at the very end of the text
    ("SELECT T1.name FROM singer AS T1.", ["select", "t1.name", "from", "singer", "as", "t1", "."]),
    ("LIMIT 1;", ["limit", "1", ";"]),
    # backticks are split off like opening quotes
    ("SELECT `name` FROM t", ["select", "`", "name", "`", "from", "t"]),
])
def test_spider_tokenize(sql, tokens):
    assert spider_tokenize(sql) == tokens


def test_unpaired_quote_is_an_error():
    # an apostrophe inside a value breaks the pairing, as upstream (single quotes become double first)
    with pytest.raises(TokenizeError, match="Unexpected quote"):
        spider_tokenize("SELECT a FROM t WHERE b = 'it''s' AND c = 'x")


def test_english_contractions_are_split_like_nltk():
    assert word_split("cannot gonna x") == ["can", "not", "gon", "na", "x"]


# NLTK's word tokenizer rule by rule (those that can fire on quote-free text), in its order: the
# reference for the one-pass version above.
_NLTK_RULES = [(re.compile(p), r) for p, r in (
    (r"([«“‘„]|[`]+)", r" \1 "), (r"(``)", r" \1 "),
    (r"([^\.])(\.)([\]\)}>\"\'»”’ ]*)\s*$", r"\1 \2 \3 "),
    (r"([:,])([^\d])", r" \1 \2"), (r"([:,])$", r" \1 "),
    (r"\.{2,}", r" \g<0> "), (r"[;@#$%&]", r" \g<0> "), ("[\u2012-\u2015]", r" \g<0> "),
    (r"([^\.])(\.)([\]\)}>\"\']*)\s*$", r"\1 \2\3 "), (r"[?!]", r" \g<0> "), (r"[*]", r" \g<0> "),
    (r"[\]\[\(\)\{\}\<\>]", r" \g<0> "), (r"--", r" -- "),
)]
_NLTK_AFTER_PADDING = [(re.compile(p), r) for p, r in (
    (r"([»”’])", r" \1 "), (r"(?i)\b(can)(?#X)(not)\b", r" \1 \2 "), (r"(?i)\b(gim)(?#X)(me)\b", r" \1 \2 "),
    (r"(?i)\b(gon)(?#X)(na)\b", r" \1 \2 "), (r"(?i)\b(got)(?#X)(ta)\b", r" \1 \2 "),
    (r"(?i)\b(lem)(?#X)(me)\b", r" \1 \2 "), (r"(?i)\b(wan)(?#X)(na)(?=\s)", r" \1 \2 "),
)]


def _nltk_reference(text: str) -> list[str]:
    for pattern, repl in _NLTK_RULES:
        text = pattern.sub(repl, text)
    text = f" {text} "
    for pattern, repl in _NLTK_AFTER_PADDING:
        text = pattern.sub(repl, text)
    return text.split()


def test_one_pass_tokenizer_equals_nltk_rule_by_rule():
    pieces = ["select", "T1.name", "cannot", "Wanna", "gimme", "x", "3", "1.5", ".", ",", ":", "(", ")", "*",
              "<", ">", "=", "!", "`", "``", "«", "’", "-", "--", "..", "...", ";", "?", "%", "\u2013",
              "[", "}", " ", " "]
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        assert word_split(text) == _nltk_reference(text), text
