"""Plausible wrong SQL made from a gold query: the reward model's negatives when the SFT model made none.

Each perturbation is one small, typical mistake (swap a column, flip a comparison, drop a condition,
change an aggregate, reverse the ORDER BY direction, change or drop the LIMIT, query the wrong table --
the only mistake ``SELECT count(*) FROM t`` admits), made on the sqlglot
tree so the result is still valid SQLite. A perturbation only becomes a *rejected* answer once it
has been executed and its result differs from the gold result (:func:`verified_perturbations`):
``ORDER BY age DESC`` flipped on a one-row table is not wrong, and must not be taught as wrong.
"""

from __future__ import annotations

import random
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from .perturbation_kinds import PERTURBATION_KINDS

__all__ = [
    "PERTURBATION_KINDS",
    "Perturbation",
    "normalize_sql",
    "perturbations",
    "schema_from_sqlite",
    "verified_perturbations",
]


_DIALECT = "sqlite"


@dataclass(frozen=True)
class Perturbation:
    """One wrong variant of a gold query and the kind of mistake it models."""

    kind: str
    sql: str


def _parse(sql: str) -> exp.Expression | None:
    try:
        tree = sqlglot.parse_one(sql.strip().rstrip(";"), read=_DIALECT)
    except (SqlglotError, ValueError, RecursionError):
        return None
    return tree


def normalize_sql(sql: str) -> str:
    """Canonical text of a query, for deduplication: same normal form, same query.

    sqlglot re-renders the tree with lower-cased identifiers and one spacing/keyword style, so
    ``select  Name from T`` and ``SELECT name FROM t;`` collide. Text that does not parse falls back to
    lower-cased, whitespace-collapsed SQL (a model's broken output still deduplicates).
    """
    tree = _parse(sql)
    if tree is not None:
        try:
            return tree.sql(dialect=_DIALECT, normalize=True, pretty=False)
        except (SqlglotError, ValueError):
            pass
    return re.sub(r"\s+", " ", sql.strip().rstrip(";")).lower()


def schema_from_sqlite(db_path: Path) -> dict[str, list[str]]:
    """Table -> column names, read from the database itself (opened read-only)."""
    uri = f"file:{Path(db_path).resolve()}?mode=ro"
    con = sqlite3.connect(uri, uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        schema: dict[str, list[str]] = {}
        for table in tables:
            quoted = table.replace('"', '""')
            schema[table] = [r[1] for r in con.execute(f'PRAGMA table_info("{quoted}")')]
        return schema
    finally:
        con.close()


# -- one generator per kind; each yields modified copies of the tree ---------------------------------


def _variants(tree: exp.Expression, node_type: type | tuple[type, ...],
              edit: Callable[[exp.Expression], Sequence[exp.Expression | None]]) -> Iterator[exp.Expression]:
    """For every node of ``node_type``, copy the tree and replace that node by each of ``edit(node)``.

    The copy's node is found by its position in the same traversal order, which is deterministic;
    ``None`` as a replacement removes the node.
    """
    count = sum(1 for _ in tree.find_all(node_type))
    for i in range(count):
        original = list(tree.find_all(node_type))[i]
        for replacement in edit(original):
            copy = tree.copy()
            target = list(copy.find_all(node_type))[i]
            if replacement is None:
                target.pop()
            else:
                target.replace(replacement.copy())
            yield copy


_FLIPS: dict[type, type] = {
    exp.GT: exp.LT, exp.LT: exp.GT, exp.GTE: exp.LTE, exp.LTE: exp.GTE, exp.EQ: exp.NEQ, exp.NEQ: exp.EQ,
}


def _flip_comparison(tree: exp.Expression) -> Iterator[exp.Expression]:
    def edit(node: exp.Expression) -> list[exp.Expression]:
        if node.find_ancestor(exp.Join) is not None:  # a broken join key is not a typical mistake
            return []
        return [_FLIPS[type(node)](this=node.this.copy(), expression=node.expression.copy())]

    yield from _variants(tree, tuple(_FLIPS), edit)


def _conjuncts(condition: exp.Expression) -> list[exp.Expression]:
    if isinstance(condition, exp.And):
        return _conjuncts(condition.this) + _conjuncts(condition.expression)
    if isinstance(condition, exp.Paren):
        return _conjuncts(condition.this) if isinstance(condition.this, exp.And) else [condition]
    return [condition]


def _drop_condition(tree: exp.Expression) -> Iterator[exp.Expression]:
    def edit(clause: exp.Expression) -> list[exp.Expression | None]:
        parts = _conjuncts(clause.this)
        if len(parts) == 1:
            return [None]  # the only condition: drop the whole WHERE / HAVING
        out: list[exp.Expression | None] = []
        for i in range(len(parts)):
            kept = [p.copy() for j, p in enumerate(parts) if j != i]
            out.append(type(clause)(this=exp.and_(*kept)))
        return out

    yield from _variants(tree, (exp.Where, exp.Having), edit)


def _change_aggregate(tree: exp.Expression) -> Iterator[exp.Expression]:
    swaps: dict[type, type] = {exp.Max: exp.Min, exp.Min: exp.Max, exp.Sum: exp.Avg, exp.Avg: exp.Sum}

    def edit(node: exp.Expression) -> list[exp.Expression]:
        if isinstance(node, exp.Count):
            arg = node.this
            if isinstance(arg, exp.Star) or arg is None:
                return []
            if isinstance(arg, exp.Distinct):  # COUNT(DISTINCT x) -> COUNT(x)
                return [exp.Count(this=arg.expressions[0].copy())] if arg.expressions else []
            return [exp.Count(this=exp.Distinct(expressions=[arg.copy()]))]
        return [swaps[type(node)](this=node.this.copy())]

    yield from _variants(tree, (exp.Max, exp.Min, exp.Sum, exp.Avg, exp.Count), edit)


def _order_direction(tree: exp.Expression) -> Iterator[exp.Expression]:
    def edit(node: exp.Expression) -> list[exp.Expression]:
        desc = not bool(node.args.get("desc"))
        # SQLite sorts NULLs first ascending and last descending; say nothing explicit about NULLs
        return [exp.Ordered(this=node.this.copy(), desc=desc, nulls_first=not desc)]

    yield from _variants(tree, exp.Ordered, edit)


def _change_limit(tree: exp.Expression) -> Iterator[exp.Expression]:
    def edit(node: exp.Expression) -> list[exp.Expression | None]:
        value = node.expression
        if not (isinstance(value, exp.Literal) and not value.is_string and value.this.isdigit()):
            return [None]
        n = int(value.this)
        return [exp.Limit(expression=exp.Literal.number(n + 1)), None]

    yield from _variants(tree, exp.Limit, edit)


def _scope_tables(column: exp.Column) -> dict[str, str]:
    """alias-or-name (lower) -> table name (lower) for the SELECT that owns ``column``."""
    select = column.find_ancestor(exp.Select)
    if select is None:
        return {}
    out: dict[str, str] = {}
    for table in select.find_all(exp.Table):
        if table.find_ancestor(exp.Select) is select:
            out[table.alias_or_name.lower()] = table.name.lower()
            out[table.name.lower()] = table.name.lower()
    return out


def _swap_column(tree: exp.Expression, schema: Mapping[str, Sequence[str]]) -> Iterator[exp.Expression]:
    lowered = {t.lower(): list(cols) for t, cols in schema.items()}

    def edit(node: exp.Expression) -> list[exp.Expression]:
        if node.find_ancestor(exp.Join) is not None:
            return []
        tables = _scope_tables(node)
        qualifier = node.table.lower()
        if qualifier:
            candidates = [tables[qualifier]] if qualifier in tables else []
        else:
            candidates = list(dict.fromkeys(tables.values()))
        name = node.name.lower()
        for table in candidates:
            columns = lowered.get(table, [])
            if name in (c.lower() for c in columns):
                others = [c for c in columns if c.lower() != name]
                return [exp.column(c, table=node.table or None, quoted=not c.isidentifier()) for c in others]
        return []  # an output alias, a string in double quotes, or unknown: leave it

    yield from _variants(tree, exp.Column, edit)


def _swap_table(tree: exp.Expression, schema: Mapping[str, Sequence[str]]) -> Iterator[exp.Expression]:
    used = {t.name.lower() for t in tree.find_all(exp.Table)}

    def edit(node: exp.Expression) -> list[exp.Expression]:
        others = [t for t in schema if t.lower() not in used]
        alias = node.args.get("alias")
        return [exp.Table(this=exp.to_identifier(t, quoted=not t.isidentifier()),
                          alias=alias.copy() if alias else None) for t in others]

    yield from _variants(tree, exp.Table, edit)


def perturbations(sql: str, schema: Mapping[str, Sequence[str]] | None = None, *,
                  kinds: Sequence[str] = PERTURBATION_KINDS, max_per_kind: int | None = None,
                  rng: random.Random | None = None) -> list[Perturbation]:
    """Candidate wrong variants of ``sql``, not yet checked by execution.

    Deduplicated by :func:`normalize_sql` and never equal to the query itself. ``swap_column`` and
    ``swap_table`` need ``schema`` (table -> columns). With ``max_per_kind`` each kind keeps at most that many variants,
    chosen by ``rng`` (the first ones without it). Unparseable SQL has no perturbations.
    """
    unknown = [k for k in kinds if k not in PERTURBATION_KINDS]
    if unknown:
        raise ValueError(f"unknown perturbation kind(s) {unknown}; known: {list(PERTURBATION_KINDS)}")
    tree = _parse(sql)
    if tree is None or not isinstance(tree, exp.Query):
        return []
    generators: dict[str, Callable[[], Iterator[exp.Expression]]] = {
        "swap_column": lambda: _swap_column(tree, schema or {}),
        "flip_comparison": lambda: _flip_comparison(tree),
        "drop_condition": lambda: _drop_condition(tree),
        "change_aggregate": lambda: _change_aggregate(tree),
        "order_direction": lambda: _order_direction(tree),
        "change_limit": lambda: _change_limit(tree),
        "swap_table": lambda: _swap_table(tree, schema or {}),
    }
    seen = {normalize_sql(sql)}
    out: list[Perturbation] = []
    for kind in kinds:
        found: list[Perturbation] = []
        for variant in generators[kind]():
            try:
                text = variant.sql(dialect=_DIALECT)
            except (SqlglotError, ValueError):
                continue
            key = normalize_sql(text)
            if key in seen:
                continue
            seen.add(key)
            found.append(Perturbation(kind, text))
        if max_per_kind is not None and len(found) > max_per_kind:
            found = rng.sample(found, max_per_kind) if rng is not None else found[:max_per_kind]
        out.extend(found)
    return out


def verified_perturbations(candidates: Sequence[Perturbation],
                           differs: Callable[[str], bool], *, limit: int | None = None) -> list[Perturbation]:
    """The candidates whose execution result really differs from the gold one, in order, at most ``limit``.

    ``differs(sql)`` executes ``sql`` and compares it with the gold result (see
    :func:`text2sql_core.rl.rewards.ExecutionJudge.differs_from_gold`): a candidate that errors or returns
    the gold result is not a valid negative.
    """
    kept: list[Perturbation] = []
    for candidate in candidates:
        if limit is not None and len(kept) >= limit:
            break
        if differs(candidate.sql):
            kept.append(candidate)
    return kept
