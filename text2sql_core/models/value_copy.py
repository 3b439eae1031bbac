"""Value-copy constrained decoding: a string literal in generated SQL must be copied from the prompt.

Text-to-SQL values (``city = 'Atlanta'``) come from the question. A large pretrained model copies
them reliably; a small model trained from scratch learns the SQL structure long before it learns to
copy words it never saw in training (``'Atlanta'`` comes out as ``'Rafala'``). Constraining decoding
inside a quoted literal to whole words of the question, as written there (a literal starts and ends at
word boundaries; after LIKE, ``%`` wildcards at the ends of the pattern are free) fixes that without
touching the model, in the spirit of PICARD's constrained decoding.

Numbers get the same treatment: a number literal the SQL compares with (after ``=``, ``<``, ``>``,
``BETWEEN`` ... ``AND``, or any number already begun outside ``LIMIT``) must be one of the question's
numbers, digit for digit, when the question has any (``one`` to ``ten`` count as numbers: "more than
one" gives ``> 1``), and a number is used no more often than the question names it (``BETWEEN 130 AND``
must go on with the other number). Measured on the demo's held-out dev split: a small model copies ``1600000`` as
``7000000`` or ``2002`` as ``2022`` far more often than it misspells a word, since a run of zeros
gives attention little to hold on to. On Spider's dev sample every such number of the gold SQL is in
its question. The question is the text after
the prompt's last ``###Input:`` (the whole prompt when it has none). Outside literals nothing is constrained, and when the literal
generated so far is not in the prompt (a value the question implies but does not spell) the
constraint steps aside rather than forcing nonsense.

Used by :func:`text2sql_core.models.generation.generate` when ``copy_values=True`` (the predict
stage's ``copy_values`` setting).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = ["ValueCopyConstraint", "allowed_in_literal", "allowed_in_number", "numbers_left", "numbers_used",
           "open_literal", "open_number", "question_numbers", "question_of"]

_QUOTES = ("'", '"')


def open_literal(text: str) -> tuple[str, str] | None:
    """``(quote, literal so far)`` when ``text`` ends inside an open string literal, else ``None``."""
    state = _open_literal(text)
    return None if state is None else (state[0], state[1])


def _open_literal(text: str) -> tuple[str, str, bool] | None:
    """Like :func:`open_literal`, plus whether the literal is a LIKE pattern."""
    quote: str | None = None
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if quote is None:
            if ch in _QUOTES:
                quote, start = ch, i + 1
        elif ch == quote:
            if i + 1 < len(text) and text[i + 1] == quote:  # '' escapes a quote inside the literal
                i += 1
            else:
                quote = None
        i += 1
    if quote is None:
        return None
    return quote, text[start:], text[: start - 1].rstrip().upper().endswith("LIKE")


INPUT_MARKER = "###input:"
RESPONSE_MARKER = "###response:"


def question_of(prompt: str) -> str:
    """The part of a prompt that literals may copy from."""
    start = prompt.lower().rfind(INPUT_MARKER)
    if start < 0:
        return prompt.strip()
    text = prompt[start + len(INPUT_MARKER):]
    end = text.lower().rfind(RESPONSE_MARKER)
    return (text[:end] if end >= 0 else text).strip()


def _occurs(value: str, source: str, *, closed: bool, like: bool = False) -> bool:
    """``value`` occurs in ``source`` starting at a word boundary and, once ``closed``, ending at one,
    without surrounding spaces. In a LIKE pattern one ``%`` may open and one may end the pattern
    (nothing follows it but the closing quote); each lifts the word boundary on its side."""
    left_free = like and value.startswith("%")
    core = value[1:] if left_free else value
    right_free = like and core.endswith("%")
    if right_free:
        core = core[:-1]
    if "%" in core and like:
        return False
    if not core:
        return not closed and not right_free
    if core != core.lstrip() or (closed and core != core.rstrip()):
        return False
    i = source.find(core)
    while i >= 0:
        start_ok = left_free or i == 0 or not source[i - 1].isalnum()
        j = i + len(core)
        end_ok = not (closed or right_free) or right_free or j == len(source) or not source[j].isalnum()
        if start_ok and end_ok:
            return True
        i = source.find(core, i + 1)
    return False


_NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                 "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_QUESTION_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w])")
_NUMBER_WORD = re.compile(r"\b(" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)
# a number being written at the end of the SQL (not part of an identifier such as T1)
_OPEN_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d*)?$")
# where a compared number starts: after a comparison operator, BETWEEN, or BETWEEN x AND
_NUMBER_START = re.compile(r"(?:[=<>]|\bBETWEEN|\bBETWEEN\s+\S+\s+AND)\s*$", re.IGNORECASE)
_SQL_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")
_STRING_LITERAL = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")
_EXEMPT = re.compile(r"\b(?:LIMIT|OFFSET)\s*$", re.IGNORECASE)


def question_numbers(question: str) -> Counter[str]:
    """The numbers a question names, with how often: digit runs as written, and the words one to ten as digits."""
    found = Counter(_QUESTION_NUMBER.findall(question))
    found.update(_NUMBER_WORDS[w.lower()] for w in _NUMBER_WORD.findall(question))
    return found


def numbers_used(sql: str) -> Counter[str]:
    """The finished number literals of ``sql`` (outside strings, ``LIMIT``/``OFFSET`` counts not included)."""
    bare = _STRING_LITERAL.sub("''", sql)
    used: Counter[str] = Counter()
    for match in _SQL_NUMBER.finditer(bare):
        if match.end() < len(bare) and not _EXEMPT.search(bare[: match.start()]):
            used[match.group()] += 1
    return used


def numbers_left(question_counts: Counter[str], sql: str) -> frozenset[str]:
    """The question's numbers the SQL has not used up yet."""
    return frozenset((question_counts - numbers_used(sql)).keys())


def open_number(text: str) -> str | None:
    """The number literal ``text`` ends in (``""`` where a compared number may start), else ``None``.

    ``LIMIT``/``OFFSET`` counts are free: "the highest" gives ``LIMIT 1`` with no 1 in the question.
    """
    match = _OPEN_NUMBER.search(text)
    if match is not None:
        return None if _EXEMPT.search(text[: match.start()]) else match.group()
    return "" if _NUMBER_START.search(text) else None


def _prefix_of_any(run: str, numbers: frozenset[str]) -> bool:
    return any(n.startswith(run) for n in numbers)


def allowed_in_number(number: str, piece: str, numbers: frozenset[str]) -> bool:
    """May ``piece`` follow the number begun so far (``""``: where one may start) given the question's numbers?

    A piece that extends the number must keep it the beginning of a question number; a piece that ends
    it must leave a whole question number. Where no number has begun, pieces that do not start one
    (a quote, a parenthesis, a column) are free.
    """
    if not number:
        piece = piece.lstrip(" ")
        if not piece or not piece[0].isdigit():
            return True
    text = number + piece
    run = re.match(r"\d+(?:\.\d*)?", text)
    if run is None:  # cannot happen for a begun number, kept for safety
        return True
    if run.end() == len(text):
        return _prefix_of_any(run.group(), numbers)
    return run.group() in numbers


def _find_all(text: str, part: str) -> Iterator[int]:
    i = text.find(part)
    while i >= 0:
        yield i
        i = text.find(part, i + 1)


def allowed_in_literal(literal: str, piece: str, quote: str, source: str, *, like: bool = False) -> bool:
    """May ``piece`` follow ``literal`` (inside ``quote``; a LIKE pattern when ``like``) given the question?"""
    if "\n" in piece:  # a value is one line of the question
        return False
    end = piece.find(quote)
    if end < 0:
        return _occurs(literal + piece, source, closed=False, like=like)
    return _occurs(literal + piece[:end], source, closed=True, like=like)


class ValueCopyConstraint:
    """A ``transformers`` logits processor: masks tokens that would make a literal leave the prompt.

    ``sources`` holds one prompt per batch row (``rows_per_source`` consecutive rows each under beam
    search); ``prompt_width`` is where generated tokens begin.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, sources: Sequence[str], prompt_width: int,
                 rows_per_source: int = 1) -> None:
        self.tokenizer = tokenizer
        self.sources = [question_of(s) for s in sources for _ in range(rows_per_source)]
        self.numbers = [question_numbers(s) for s in self.sources]
        self.prompt_width = prompt_width
        special = set(tokenizer.all_special_ids)
        self.pieces: list[str | None] = [None if i in special else tokenizer.decode([i])
                                         for i in range(len(tokenizer))]
        self.by_first: dict[str, list[int]] = {}
        for i, p in enumerate(self.pieces):
            if p:
                self.by_first.setdefault(p[0], []).append(i)
        self._cache: dict[tuple[str, str, str, bool], list[int] | None] = {}
        # the pieces that can begin or extend a number (digits, a decimal point); every other piece
        # either leaves the number alone or ends it
        self.numeric = [i for i, p in enumerate(self.pieces) if p and p.lstrip(" ")[:1] in set("0123456789.")]

    def allowed(self, literal: str, quote: str, source: str, *, like: bool = False) -> list[int] | None:
        """Token ids allowed next, or ``None`` when the literal so far is not in the question (no constraint)."""
        key = (literal, quote, source, like)
        if key not in self._cache:
            self._cache[key] = self._allowed(literal, quote, source, like)
        return self._cache[key]

    def _allowed(self, literal: str, quote: str, source: str, like: bool) -> list[int] | None:
        if not _occurs(literal, source, closed=False, like=like):
            return None
        if like:  # wildcards lift word boundaries: check every piece
            candidates: Iterable[int] = range(len(self.pieces))
        else:  # only a piece that starts with a character following the literal in the question, or the quote
            if literal:
                firsts = {source[i + len(literal)] for i in _find_all(source, literal) if i + len(literal) < len(source)}
            else:
                firsts = set(source)
            firsts.add(quote)
            candidates = [i for ch in firsts for i in self.by_first.get(ch, ())]
        return sorted(i for i in candidates
                      if self.pieces[i] is not None and allowed_in_literal(literal, self.pieces[i], quote, source,
                                                                           like=like))

    def blocked_in_number(self, number: str, numbers: frozenset[str]) -> tuple[list[int], bool] | None:
        """``(numeric pieces blocked, whether all other pieces are blocked too)``, or ``None`` (no constraint).

        No constraint when the question names no number, or the number begun is not the start of one
        of its numbers (a value the question implies; the constraint steps aside).
        """
        if not numbers or (number and not _prefix_of_any(number, numbers)):
            return None
        blocked = [i for i in self.numeric if not allowed_in_number(number, self.pieces[i] or "", numbers)]
        return blocked, bool(number) and number not in numbers

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
        for row, text in enumerate(texts):
            state = _open_literal(text)
            if state is None:
                self._constrain_number(text, row, scores)
                continue
            quote, literal, like = state
            allowed = self.allowed(literal, quote, self.sources[row], like=like)
            if not allowed:
                continue
            keep = torch.full_like(scores[row], float("-inf"))
            idx = torch.tensor(allowed, device=scores.device)
            keep[idx] = scores[row, idx]
            scores[row] = keep
        return scores

    def _constrain_number(self, text: str, row: int, scores: torch.Tensor) -> None:
        import torch

        number = open_number(text)
        if number is None:
            return
        verdict = self.blocked_in_number(number, numbers_left(self.numbers[row], text))
        if verdict is None:
            return
        blocked, only_numeric = verdict
        if only_numeric:  # the number is not finished: only digits that keep it a question number
            keep = torch.full_like(scores[row], float("-inf"))
            allowed = torch.tensor(sorted(set(self.numeric) - set(blocked)), dtype=torch.long, device=scores.device)
            if allowed.numel() == 0:
                return
            keep[allowed] = scores[row, allowed]
            scores[row] = keep
        elif blocked:
            scores[row, torch.tensor(blocked, dtype=torch.long, device=scores.device)] = float("-inf")
