"""Text-level rewrites the official evaluator applies before it executes a query.

Upstream does these with ``sqlparse``; a small lexer that knows strings, quoted names, comments and
words is enough to reproduce them: ``DISTINCT`` is removed wherever it is a word of its own (never
inside a string, a quoted name or a comment), ``> =`` becomes ``>=``, ``YEAR(CURDATE())`` becomes 2020.
The same lexer counts statements (a prediction may hold only one) and finds literal values for
``--plug-value``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

__all__ = ["Lexeme", "exec_form", "lex", "literal_positions", "plug_alternatives", "postprocess",
           "remove_distinct", "replace_cur_year", "statement_count"]

_LEXEME = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<string>'(?:''|\\'|[^'])*')
  | (?P<dquote>"(?:""|\\"|[^"])*")
  | (?P<bquote>`[^`]*`)
  | (?P<bracket>\[[^\]]*\])
  | (?P<number>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w$]))
  | (?P<word>[^\W\d][\w$#]*|\d[\w$#]*)
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)


@dataclass(frozen=True, slots=True)
class Lexeme:
    kind: str  # space | comment | string | dquote | bquote | bracket | number | word | other
    text: str


def lex(sql: str) -> list[Lexeme]:
    """Split ``sql`` into lexemes whose texts concatenate back to ``sql``. Never fails."""
    return [Lexeme(m.lastgroup or "other", m.group()) for m in _LEXEME.finditer(sql)]


def postprocess(sql: str) -> str:
    """Join comparison operators split by a space, as upstream does before executing."""
    return sql.replace("> =", ">=").replace("< =", "<=").replace("! =", "!=")


def remove_distinct(sql: str) -> str:
    """Drop every DISTINCT word: by default the official EX ignores DISTINCT on both sides."""
    if "distinct" not in sql.lower():
        return sql
    return "".join(x.text for x in lex(sql) if not (x.kind == "word" and x.text.lower() == "distinct"))


_CUR_YEAR = re.compile(r"YEAR\s*\(\s*CURDATE\s*\(\s*\)\s*\)\s*", re.IGNORECASE)


def replace_cur_year(sql: str) -> str:
    """MySQL's ``YEAR(CURDATE())`` as upstream pins it (SQLite has no CURDATE)."""
    return _CUR_YEAR.sub("2020", sql)


def exec_form(sql: str, *, keep_distinct: bool = False) -> str:
    """``sql`` as the official EX sees it: operators joined, DISTINCT dropped unless kept.

    Upstream decides row-order sensitivity (``order by`` in the gold) and plugs values on this form;
    ``replace_cur_year`` is applied last, right before execution.
    """
    sql = postprocess(sql)
    return sql if keep_distinct else remove_distinct(sql)


def statement_count(sql: str) -> int:
    """Statements with content (``SELECT 1;`` is one, ``SELECT 1; DROP t`` two, blank text zero)."""
    if not any(ch in sql for ch in ";-/"):  # no separator, no comment: the common case
        return 1 if sql.strip() else 0
    count, content = 0, False
    for x in lex(sql):
        if x.kind == "other" and x.text == ";":
            count += content
            content = False
        elif x.kind not in ("space", "comment"):
            content = True
    return count + content


def literal_positions(lexemes: list[Lexeme]) -> list[int]:
    """Indices of value literals: strings in single or double quotes (Spider uses both) and numbers."""
    return [i for i, x in enumerate(lexemes) if x.kind in ("string", "dquote", "number")]


def plug_alternatives(gold: str, pred: str, *, limit: int) -> list[str]:
    """``pred`` with its value literals replaced by every combination of the gold query's values.

    The official ``--plug_value``: value prediction stops mattering, only the query's structure is
    scored. At most ``limit`` alternatives (upstream has no bound; ``len(values) ** slots`` grows fast).
    """
    gold_lexemes = lex(gold)
    values = list(dict.fromkeys(gold_lexemes[i].text for i in literal_positions(gold_lexemes)))
    lexemes = lex(pred)
    slots = literal_positions(lexemes)
    if not values or not slots:
        return []
    out = []
    for combo in itertools.product(values, repeat=len(slots)):
        if len(out) >= limit:
            break
        texts = [x.text for x in lexemes]
        for slot, value in zip(slots, combo, strict=True):
            texts[slot] = value
        out.append("".join(texts))
    return out
