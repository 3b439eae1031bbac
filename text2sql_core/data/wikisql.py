"""WikiSQL: its question file, its tables file and its SQLite database, as this recipe reads them.

WikiSQL (Zhong et al. 2017) ships three files per split:

* ``<split>.jsonl``: one question a line, ``{table_id, question, sql: {sel, agg, conds}}``, where the
  logical form names columns by index: ``sel`` the selected column, ``agg`` an index into
  ``AGG_OPS``, and each condition ``[column, operator index into COND_OPS, value]``;
* ``<split>.tables.jsonl``: one table a line, ``{id, header, types, rows}`` (``types``: text / real);
* ``<split>.db``: SQLite with one table ``table_<id>`` per table (``-`` in the id becomes ``_``) whose
  columns are ``col0..colN``; text is stored lower-cased, ``real`` columns as numbers.

The prompt shows the real header names (``"No."``, ``"Player"``), and the gold SQL the model learns
uses them, double-quoted. To run a prediction, header names are mapped back to ``col<i>`` and string
literals lower-cased (as WikiSQL's own engine lowers condition values), so a prediction may use
either naming. Columns with duplicate header names: the first one gets the name.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInput
from .formats import DbSchema, Example
from .jsonl import read_numbered_records

__all__ = [
    "AGG_OPS",
    "COND_OPS",
    "LogicalForm",
    "WikiQuestion",
    "WikiTable",
    "check_database",
    "execution_sql",
    "parse_logical_form",
    "prediction_sql",
    "read_questions",
    "read_tables",
    "result_key",
    "tables_jsonl",
    "target_sql",
    "to_example",
    "to_schema",
]

AGG_OPS: tuple[str, ...] = ("", "MAX", "MIN", "COUNT", "SUM", "AVG")
#: WikiSQL declares a fourth operator, "OP", that no question uses; it is refused as out of range
COND_OPS: tuple[str, ...] = ("=", ">", "<")

_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_FIRST_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)")
_KEYWORDS = frozenset({
    "select", "from", "where", "and", "or", "not", "null", "is", "in", "like", "between", "group", "by", "order",
    "having", "limit", "as", "distinct", "count", "sum", "avg", "min", "max", "asc", "desc", "union", "all",
    "join", "on", "case", "when", "then", "else", "end", "exists", "cast"})


@dataclass(frozen=True)
class WikiTable:
    """One table of ``<split>.tables.jsonl``: its id, header names and column types."""

    id: str
    header: tuple[str, ...]
    types: tuple[str, ...]

    @property
    def db_name(self) -> str:
        """The table's name in WikiSQL's SQLite file."""
        return "table_" + re.sub(r"[^0-9A-Za-z_]", "_", self.id)

    def header_index(self) -> dict[str, int]:
        """Lower-cased header name -> column index (first occurrence wins)."""
        out: dict[str, int] = {}
        for i, name in enumerate(self.header):
            out.setdefault(name.strip().lower(), i)
        return out


@dataclass(frozen=True)
class LogicalForm:
    """WikiSQL's ``sql`` field: selected column, aggregation, and ``(column, operator, value)`` conditions."""

    sel: int
    agg: int
    conds: tuple[tuple[int, int, Any], ...] = ()

    def key(self) -> tuple[int, int, frozenset]:
        """What logical-form accuracy compares: conditions as a set, values normalised as results are."""
        return self.sel, self.agg, frozenset((c, o, _value_key(v)) for c, o, v in self.conds)


@dataclass(frozen=True)
class WikiQuestion:
    """One line of ``<split>.jsonl``."""

    line: int
    table_id: str
    question: str
    form: LogicalForm
    item: dict[str, Any] = field(repr=False, compare=False)


def read_tables(path: Path) -> dict[str, WikiTable]:
    """``<split>.tables.jsonl`` into tables by id; every line needs ``id``, ``header`` and ``types``."""
    path = Path(path)
    tables: dict[str, WikiTable] = {}
    for n, rec in read_numbered_records(path, missing="tables file not found"):
        where = {"uri": str(path), "record": f"line {n}"}
        table_id = rec.get("id")
        if not isinstance(table_id, str) or not table_id:
            raise BadInput("missing or empty", field="id", **where)
        if table_id in tables:
            raise BadInput(f"duplicate table id {table_id!r}", field="id", **where)
        header = rec.get("header")
        if not isinstance(header, list) or not header or not all(isinstance(h, str) for h in header):
            raise BadInput("must be a non-empty list of column names", field="header", **where)
        types = rec.get("types", ["text"] * len(header))
        if (not isinstance(types, list) or len(types) != len(header)
                or not all(t in ("text", "real") for t in types)):
            raise BadInput(f"must list `text` or `real` for each of the {len(header)} columns", field="types",
                           **where)
        tables[table_id] = WikiTable(table_id, tuple(header), tuple(types))
    if not tables:
        raise BadInput("tables file holds no tables", uri=str(path))
    return tables


def tables_jsonl(tables: Iterable[WikiTable]) -> str:
    """A tables file :func:`read_tables` reads back (``id``, ``header``, ``types``; the rows live in the database)."""
    return "".join(json.dumps({"id": t.id, "header": list(t.header), "types": list(t.types)}, ensure_ascii=False)
                   + "\n" for t in tables)


def _index(value: Any, size: int, what: str, where: dict[str, Any], name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < size:
        raise BadInput(f"{what} {value!r} is out of range (0..{size - 1})", field=name, **where)
    return value


def read_questions(path: Path, tables: dict[str, WikiTable]) -> list[WikiQuestion]:
    """``<split>.jsonl`` checked against the tables: a table id with no table or an index out of range is named."""
    path = Path(path)
    out = []
    for n, rec in read_numbered_records(path, missing="dataset not found"):
        where = {"uri": str(path), "record": f"line {n}"}
        table_id = rec.get("table_id")
        if not isinstance(table_id, str) or not table_id:
            raise BadInput("missing or empty", field="table_id", **where)
        table = tables.get(table_id)
        if table is None:
            raise BadInput(f"table id {table_id!r} has no table in the tables file", field="table_id", **where)
        question = rec.get("question")
        if not isinstance(question, str) or not question.strip():
            raise BadInput("missing or empty", field="question", **where)
        sql = rec.get("sql")
        if not isinstance(sql, dict):
            raise BadInput("must be an object {sel, agg, conds}", field="sql", **where)
        width = len(table.header)
        sel = _index(sql.get("sel"), width, "column index", where, "sql.sel")
        agg = _index(sql.get("agg"), len(AGG_OPS), "aggregation index", where, "sql.agg")
        raw_conds = sql.get("conds", [])
        if not isinstance(raw_conds, list):
            raise BadInput("must be a list of [column, operator, value]", field="sql.conds", **where)
        conds = []
        for k, cond in enumerate(raw_conds):
            name = f"sql.conds[{k}]"
            if not isinstance(cond, list) or len(cond) != 3:
                raise BadInput("must be [column, operator, value]", field=name, **where)
            col = _index(cond[0], width, "column index", where, name)
            op = _index(cond[1], len(COND_OPS), "operator index", where, name)
            value = cond[2]
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise BadInput(f"value must be a string or a number, got {value!r}", field=name, **where)
            conds.append((col, op, value))
        out.append(WikiQuestion(n, table_id, question.strip(), LogicalForm(sel, agg, tuple(conds)), rec))
    if not out:
        raise BadInput("dataset holds no questions", uri=str(path))
    return out


def check_database(db_path: Path, tables: dict[str, WikiTable], table_ids: set[str]) -> None:
    """Every table the questions use exists in the SQLite file with one ``col<i>`` per header name."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise BadInput("database not found", uri=str(db_path))
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            for table_id in sorted(table_ids):
                table = tables[table_id]
                cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{table.db_name}")')]
                if not cols:
                    raise BadInput(f"table {table.db_name} (id {table_id!r}) not found", uri=str(db_path))
                want = [f"col{i}" for i in range(len(table.header))]
                if cols[:len(want)] != want:
                    raise BadInput(f"table {table.db_name} has columns {', '.join(cols)}; the tables file gives "
                                   f"it {len(want)} (col0..col{len(want) - 1})", uri=str(db_path))
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise BadInput(f"not a SQLite database ({exc})", uri=str(db_path)) from None


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _as_number(value: Any) -> float | None:
    """A condition value read as WikiSQL's engine reads it for a ``real`` column (first number in the text)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).replace(",", "").strip()
    if _NUMBER.match(text):
        return float(text)
    found = _FIRST_NUMBER.search(text)
    return float(found.group(0)) if found else None


def _number_literal(x: float) -> str:
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def _sql(form: LogicalForm, table: WikiTable, column: Any, literal: Any) -> str:
    agg = AGG_OPS[form.agg]
    sel = column(form.sel)
    out = f"SELECT {agg}({sel})" if agg else f"SELECT {sel}"
    out += f" FROM {table.db_name}"
    if form.conds:
        out += " WHERE " + " AND ".join(f"{column(c)} {COND_OPS[o]} {literal(c, v)}" for c, o, v in form.conds)
    return out


def target_sql(form: LogicalForm, table: WikiTable) -> str:
    """The gold SQL the model learns: header names quoted, values as the question spells them."""
    def literal(col: int, value: Any) -> str:
        if table.types[col] == "real":
            number = _as_number(value)
            if number is not None:
                return _number_literal(number)
        return _quote_text(str(value))

    return _sql(form, table, lambda i: _quote_ident(table.header[i]), literal)


def execution_sql(form: LogicalForm, table: WikiTable) -> str:
    """The gold query as WikiSQL's engine runs it: ``col<i>`` names, text lower-cased, real values as numbers."""
    def literal(col: int, value: Any) -> str:
        if table.types[col] == "real":
            number = _as_number(value)
            return "NULL" if number is None else _number_literal(number)
        return _quote_text(str(value).lower())

    return _sql(form, table, lambda i: f"col{i}", literal)


_TOKEN = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|`[^`]*`|\[[^\]]*\]|[A-Za-z_][A-Za-z0-9_]*|\s+|.""", re.DOTALL)


def prediction_sql(sql: str, table: WikiTable) -> str:
    """A prediction made runnable on WikiSQL's database: header names -> ``col<i>``, string literals lowered.

    Quoted identifiers (``"No."``, backticks, brackets) and bare words that are a header name (and not
    a SQL keyword) are renamed; everything else is kept as written.
    """
    names = table.header_index()
    out = []
    for tok in _TOKEN.findall(sql):
        first = tok[0]
        if first == "'":
            out.append(tok.lower())
            continue
        if first in "\"`[":
            inner = tok[1:-1].replace('""', '"') if first == '"' else tok[1:-1]
            index = names.get(inner.strip().lower())
            out.append(f"col{index}" if index is not None else tok)
            continue
        if first.isalpha() or first == "_":
            index = names.get(tok.lower())
            out.append(f"col{index}" if index is not None and tok.lower() not in _KEYWORDS else tok)
            continue
        out.append(tok)
    return "".join(out)


_FORM = re.compile(
    r"^\s*SELECT\s+(?:(?P<agg>MAX|MIN|COUNT|SUM|AVG)\s*\(\s*(?P<acol>col\d+)\s*\)|(?P<col>col\d+))"
    r"\s+FROM\s+(?P<table>\w+)(?:\s+WHERE\s+(?P<where>.+?))?\s*;?\s*$", re.IGNORECASE | re.DOTALL)
_COND = re.compile(r"^\s*col(?P<col>\d+)\s*(?P<op>=|>|<)\s*(?P<value>'(?:[^']|'')*'|[-+]?(?:\d+\.?\d*|\.\d+))\s*$",
                   re.DOTALL)


def parse_logical_form(sql: str, table: WikiTable) -> LogicalForm | None:
    """The logical form of a prediction in WikiSQL's shape (after :func:`prediction_sql`), else None."""
    m = _FORM.match(prediction_sql(sql, table))
    if m is None or m.group("table").lower() != table.db_name.lower():
        return None
    agg = AGG_OPS.index(m.group("agg").upper()) if m.group("agg") else 0
    sel = int((m.group("acol") or m.group("col"))[3:])
    conds = []
    if m.group("where"):
        parts, current = [], []
        for tok in _TOKEN.findall(m.group("where")):  # a string literal is one token: its ANDs stay inside
            if tok.upper() == "AND":
                parts.append("".join(current))
                current = []
            else:
                current.append(tok)
        parts.append("".join(current))
        for part in parts:
            c = _COND.match(part)
            if c is None:
                return None
            raw = c.group("value")
            value: Any = raw[1:-1].replace("''", "'") if raw.startswith("'") else float(raw)
            conds.append((int(c.group("col")), COND_OPS.index(c.group("op")), value))
    if sel >= len(table.header) or any(col >= len(table.header) for col, _, _ in conds):
        return None
    return LogicalForm(sel, agg, tuple(conds))


def _value_key(value: Any) -> Any:
    """A result cell or condition value as WikiSQL compares them: text case-insensitively, numbers as numbers."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        x = float(value)
        return x if math.isnan(x) else round(x, 6)
    text = str(value).strip().lower()
    if _NUMBER.match(text.replace(",", "")):
        return round(float(text.replace(",", "")), 6)
    return text


def result_key(rows: tuple[tuple, ...]) -> Counter:
    """Rows as a bag of normalised cells (WikiSQL queries have no ORDER BY: order carries nothing)."""
    return Counter(tuple(_value_key(v) for v in row) for row in rows)


def to_schema(table: WikiTable) -> DbSchema:
    """The table as a one-table schema, so the DB-GPT-Hub prompt shows its real header names."""
    entry = {"db_id": table.id, "table_names_original": [table.db_name], "table_names": [table.db_name],
             "column_names_original": [[-1, "*"]] + [[0, h] for h in table.header],
             "column_names": [[-1, "*"]] + [[0, h] for h in table.header],
             "column_types": ["text"] + ["number" if t == "real" else "text" for t in table.types],
             "primary_keys": [], "foreign_keys": []}
    return DbSchema(db_id=table.id, table_names=(table.db_name,), columns=tuple((0, h) for h in table.header),
                    primary_keys=(), foreign_keys=(), entry=entry)


def to_example(q: WikiQuestion, table: WikiTable) -> Example:
    query = target_sql(q.form, table)
    item = {**q.item, "db_id": table.id, "question": q.question, "query": query}
    return Example(db_id=table.id, question=q.question, query=query, history=(), record=f"line {q.line}",
                   item=item)
