"""Schemas as the official Spider evaluator sees them.

Two sources, on purpose: column ids (``__table.column__``) come from the SQLite file itself
(every table in ``sqlite_master``, lower-cased), while the foreign-key map that lets
``T2.singer_id`` stand for ``T1.singer_id`` comes from ``tables.json``. Using ``tables.json`` for
both would give different ids wherever the two disagree.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from ..data.formats import DbSchema, read_tables
from ..errors import BadInput

__all__ = ["ALL_COLUMNS", "Schema", "column_id", "foreign_key_maps", "table_id"]

ALL_COLUMNS = "__all__"


def column_id(table: str, column: str) -> str:
    return f"__{table.lower()}.{column.lower()}__"


def table_id(table: str) -> str:
    return f"__{table.lower()}__"


@dataclass
class Schema:
    """Lower-cased ``{table: [columns]}`` of one database, with the official id map.

    ``id_map`` keeps the official insertion order (``*``, every ``table.column``, every table).
    """

    tables: dict[str, list[str]]
    id_map: dict[str, str] = field(init=False)
    #: ``{"__table__": {"__table.column__", ...}}``: the columns each FROM table brings into scope
    columns_of: dict[str, frozenset[str]] = field(init=False)

    def __post_init__(self) -> None:
        ids = {"*": ALL_COLUMNS}
        for table, columns in self.tables.items():
            for col in columns:
                ids[f"{table}.{col}"] = column_id(table, col)
        for table in self.tables:
            ids[table] = table_id(table)
        self.id_map = ids
        self.columns_of = {table_id(t): frozenset(column_id(t, c) for c in cols)
                           for t, cols in self.tables.items()}

    @classmethod
    def from_sqlite(cls, path: str | Path) -> Schema:
        """Read the schema of a SQLite file without any chance of writing to it."""
        # immutable: no locks, no journal files; the file is only read
        uri = Path(path).resolve().as_uri() + "?mode=ro&immutable=1"
        try:
            conn = sqlite3.connect(uri, uri=True)
        except sqlite3.Error as exc:
            raise BadInput(f"cannot open database: {exc}", uri=str(path)) from None
        try:
            names = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            tables: dict[str, list[str]] = {}
            for name in names:
                quoted = '"' + name.replace('"', '""') + '"'
                info = conn.execute(f"PRAGMA table_info({quoted})")
                tables[name.lower()] = [str(row[1]).lower() for row in info]
        except sqlite3.Error as exc:
            raise BadInput(f"cannot read the schema: {exc}", uri=str(path)) from None
        finally:
            conn.close()
        return cls(tables)


def _foreign_key_map(schema: DbSchema) -> dict[str, str]:
    """Map every column of a foreign-key group to the group's lowest-index column.

    Groups are built as upstream does: a key pair joins the *first* existing group that holds
    either column (groups are never merged), else starts a new one.
    """
    ids = [ALL_COLUMNS] + [column_id(schema.table_names[t], c) for t, c in schema.columns]
    groups: list[set[int]] = []
    for a, b in schema.foreign_keys:
        group = next((g for g in groups if a in g or b in g), None)
        if group is None:
            group = set()
            groups.append(group)
        group.update((a, b))
    fk: dict[str, str] = {}
    for group in groups:
        members = sorted(group)
        for idx in members:
            fk[ids[idx]] = ids[members[0]]
    return fk


def foreign_key_maps(tables_json: str | Path) -> dict[str, dict[str, str]]:
    """``{db_id: {column id: representative column id}}`` for every schema of a ``tables.json``."""
    return {db_id: _foreign_key_map(schema) for db_id, schema in read_tables(Path(tables_json)).items()}
