"""Split SQL into the tokens the official Spider parser sees.

The official evaluator runs NLTK's ``word_tokenize`` over the query after swapping every quoted
value for a placeholder. Which queries parse (and so which predictions can score an exact match)
depends on that tokenizer's quirks: ``<``/``>``/``(``/``*`` are split off, ``=`` is not (``a=1``
stays one token and fails to parse), a comma before a digit is kept (``1,2``), a period only at the
very end of the text is split. NLTK is not a dependency here, so this module re-implements the
rules of its word tokenizer that can fire on quote-free text (every quote is gone by then).
"""

from __future__ import annotations

import re

__all__ = ["TokenizeError", "spider_tokenize", "word_split"]


class TokenizeError(ValueError):
    """Raised when quotes do not pair up: the official tokenizer asserts on that too."""


# The NLTK word-tokenizer rules that can fire once quotes are gone, in NLTK's order. Its many
# "pad this character with spaces" rules touch disjoint characters, so one pass does them all;
# the context-dependent rules (final period, comma before a non-digit) run first, as in NLTK.
_FINAL_PERIOD = re.compile(r"([^.])(\.)([\])}>»”’ ]*)\s*$")          # a period that ends the text
_COMMA = re.compile(r"([:,])([^\d])")                               # , or : unless a digit follows
_COMMA_AT_END = re.compile(r"([:,])$")
_PADDED = re.compile("``|`|--|\\.{2,}|[«“‘„»”’;@#$%&?!*\\[\\](){}<>\u2012-\u2015]")
# English contractions NLTK splits even inside SQL identifiers ("cannot" -> "can not").
_CONTRACTIONS = tuple(re.compile(p) for p in (
    r"(?i)\b(can)(not)\b", r"(?i)\b(gim)(me)\b", r"(?i)\b(gon)(na)\b", r"(?i)\b(got)(ta)\b",
    r"(?i)\b(lem)(me)\b", r"(?i)\b(wan)(na)(?=\s)",
))
_CONTRACTION_HINTS = ("cannot", "gimme", "gonna", "gotta", "lemme", "wanna")


def word_split(text: str) -> list[str]:
    """Tokens of quote-free text, as NLTK's ``word_tokenize`` returns them for one sentence."""
    if "." in text:
        text = _FINAL_PERIOD.sub(r"\1 \2 \3 ", text)
    if "," in text or ":" in text:
        text = _COMMA_AT_END.sub(r" \1 ", _COMMA.sub(r" \1 \2", text))
    text = _PADDED.sub(r" \g<0> ", text)
    lowered = text.lower()
    if any(hint in lowered for hint in _CONTRACTION_HINTS):
        text = f" {text} "
        for pattern in _CONTRACTIONS:
            text = pattern.sub(r" \1 \2 ", text)
    return text.split()


_COMPARISON_PREFIXES = ("!", ">", "<")


def spider_tokenize(query: str) -> list[str]:
    """Lower-cased tokens of ``query``; quoted values stay whole tokens, in double quotes.

    Single quotes become double quotes first, so ``'it''s'`` and a lone apostrophe break the
    pairing exactly as in the official evaluator (``TokenizeError``). ``! =`` style pairs are
    re-joined into one operator after splitting.
    """
    text = str(query).replace("'", '"')
    quotes = [i for i, ch in enumerate(text) if ch == '"']
    if len(quotes) % 2:
        raise TokenizeError("Unexpected quote")
    values: dict[str, str] = {}
    # Right to left, so the offsets of the quotes still to be replaced stay valid.
    for k in range(len(quotes) - 1, 0, -2):
        start, end = quotes[k - 1], quotes[k]
        key = f"__val_{start}_{end}__"
        values[key] = text[start:end + 1]
        text = text[:start] + key + text[end + 1:]
    toks = [tok.lower() for tok in word_split(text)]
    toks = [values.get(tok, tok) for tok in toks]
    # Re-join "!", ">", "<" with a following "=", last one first (same index arithmetic as upstream,
    # including its wrap-around when "=" is the first token).
    for eq in reversed([i for i, tok in enumerate(toks) if tok == "="]):
        prev = toks[eq - 1]
        if prev in _COMPARISON_PREFIXES:
            toks = toks[:eq - 1] + [prev + "="] + toks[eq + 1:]
    return toks
