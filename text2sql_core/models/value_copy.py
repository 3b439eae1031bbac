"""Value-copy constrained decoding: a string literal in generated SQL must be copied from the prompt.

Text-to-SQL values (``city = 'Atlanta'``) come from the question. A large pretrained model copies
them reliably; a small model trained from scratch learns the SQL structure long before it learns to
copy words it never saw in training (``'Atlanta'`` comes out as ``'Rafala'``). Constraining decoding
inside a quoted literal to whole words of the question, as written there (a literal starts and ends at
word boundaries; after LIKE, ``%`` wildcards at the ends of the pattern are free) fixes that without
touching the model, in the spirit of PICARD's constrained decoding. The question is the text after
the prompt's last ``###Input:`` (the whole prompt when it has none). Outside literals nothing is constrained, and when the literal
generated so far is not in the prompt (a value the question implies but does not spell) the
constraint steps aside rather than forcing nonsense.

Used by :func:`text2sql_core.models.generation.generate` when ``copy_values=True`` (the predict
stage's ``copy_values`` setting).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = ["ValueCopyConstraint", "allowed_in_literal", "open_literal", "question_of"]

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

    ``sources`` holds one prompt per batch row; ``prompt_width`` is where generated tokens begin.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, sources: Sequence[str], prompt_width: int) -> None:
        self.tokenizer = tokenizer
        self.sources = [question_of(s) for s in sources]
        self.prompt_width = prompt_width
        special = set(tokenizer.all_special_ids)
        self.pieces: list[str | None] = [None if i in special else tokenizer.decode([i])
                                         for i in range(len(tokenizer))]

    def allowed(self, literal: str, quote: str, source: str, *, like: bool = False) -> list[int] | None:
        """Token ids allowed next, or ``None`` when the literal so far is not in the question (no constraint)."""
        if not _occurs(literal, source, closed=False, like=like):
            return None
        return [i for i, p in enumerate(self.pieces)
                if p is not None and allowed_in_literal(literal, p, quote, source, like=like)]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
        for row, text in enumerate(texts):
            state = _open_literal(text)
            if state is None:
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
