"""Readers for the Text-to-SQL datasets this recipe trains on, and for their schema files.

Every format is read into the same two shapes: ``DbSchema`` (one entry of a Spider-style
``tables.json``) and ``Example`` (one question with its gold SQL and the earlier turns of its
conversation). Anything malformed is a ``BadInput`` naming the file, the record and the field, so a
bad dataset fails the prepare step at once (exit 2) instead of producing a half-usable one.

Formats (field names as the datasets publish them):

* ``spider``: a JSON list of ``{db_id, question, query}``.
* ``bird``: a JSON list of ``{db_id, question, evidence, SQL}``; the evidence (external knowledge)
  is appended to the question, separated by one space, when it is not empty.
* ``cosql``, ``sparc``, ``chase``: a JSON list of conversations ``{database_id, interaction:
  [{utterance, query}, ...]}``; every turn becomes one example whose history is the earlier turns.

A ``.jsonl`` file (one record a line) is read the same way as a ``.json`` list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInput

__all__ = [
    "DATASET_FORMATS",
    "DbSchema",
    "Example",
    "load_json_records",
    "read_examples",
    "read_tables",
]

DATASET_FORMATS: tuple[str, ...] = ("spider", "bird", "cosql", "sparc", "chase")
MULTI_TURN_FORMATS: frozenset[str] = frozenset({"cosql", "sparc", "chase"})


@dataclass(frozen=True)
class DbSchema:
    """One database of a ``tables.json``: original table and column names, keys.

    Key indices are Spider's: positions in ``column_names_original`` where position 0 is ``*``.
    """

    db_id: str
    table_names: tuple[str, ...]
    #: (table index, original column name) for every column, ``*`` excluded
    columns: tuple[tuple[int, str], ...]
    #: an int per single-column key, a list for a composite key (BIRD writes those)
    primary_keys: tuple[int | tuple[int, ...], ...]
    foreign_keys: tuple[tuple[int, int], ...]
    #: the tables.json entry as read, for writing back the schemas a prepared dataset uses
    entry: dict[str, Any] = field(repr=False, compare=False)

    def column(self, spider_index: int) -> tuple[int, str]:
        """(table index, column name) of a key index (1-based: 0 is ``*``)."""
        return self.columns[spider_index - 1]


@dataclass(frozen=True)
class Example:
    """One question to answer with SQL, plus the earlier turns of its conversation (multi-turn)."""

    db_id: str
    #: the text the model sees (BIRD: question and evidence)
    question: str
    query: str
    #: earlier (question, SQL) turns of the same conversation, oldest first
    history: tuple[tuple[str, str], ...]
    #: where it came from, for error messages: "12" or "12, turn 3" (0-based record, 1-based turn)
    record: str
    #: the item for a Spider-style dev.json: the source fields plus ``db_id``, ``question``, ``query``
    item: dict[str, Any] = field(repr=False, compare=False)


def load_json_records(path: Path, *, what: str) -> list[Any]:
    """Read a JSON list (or JSON lines) file; a missing or malformed file is a ``BadInput``.

    ``what`` says which input this is ("dataset", "tables file") so the message reads naturally.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{what} not found" if not path.exists() else f"{what} is not a file", uri=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{what} is not UTF-8 text ({exc.reason} at byte {exc.start})", uri=str(path)) from None
    if path.suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise BadInput(f"malformed JSON in {what}: {exc.msg} (line {lineno}, column {exc.colno})",
                               uri=str(path)) from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"malformed JSON in {what}: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                       uri=str(path)) from None
    if not isinstance(data, list):
        raise BadInput(f"{what} must hold a JSON list of records, found a JSON {type(data).__name__}",
                       uri=str(path))
    return data


def _field(rec: Any, name: str, *, path: Path, record: str, kind: type | tuple[type, ...] = str,
           required: bool = True, nonempty: bool = True) -> Any:
    """One field of a record, type-checked; empty strings and lists count as missing."""
    if not isinstance(rec, dict):
        raise BadInput(f"record must be a JSON object, found a JSON {type(rec).__name__}", uri=str(path),
                       record=record)
    if name not in rec or rec[name] is None:
        if required:
            raise BadInput("missing field", uri=str(path), record=record, field=name)
        return None
    value = rec[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BadInput(f"must be a {want}, found {type(value).__name__}", uri=str(path), record=record,
                       field=name)
    if nonempty and isinstance(value, str | list) and not (value.strip() if isinstance(value, str) else value):
        raise BadInput("is empty", uri=str(path), record=record, field=name)
    return value


def _list_field(value: Any, *, path: Path, record: str, field_name: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadInput("must be a list", uri=str(path), record=record, field=field_name)
    return value


def _key_index(idx: Any, n_columns: int, path: Path, record: str, field_name: str) -> int:
    """A key's column index, checked: Spider counts from 1 (0 is ``*``)."""
    if not isinstance(idx, int) or isinstance(idx, bool) or not 1 <= idx <= n_columns:
        raise BadInput(f"column index {idx!r} is not between 1 and {n_columns}", uri=str(path), record=record,
                       field=field_name)
    return idx


def read_tables(path: Path) -> dict[str, DbSchema]:
    """Read a Spider-style ``tables.json`` into schemas by ``db_id``; checks every key index."""
    path = Path(path)
    schemas: dict[str, DbSchema] = {}
    first_seen: dict[str, int] = {}
    for i, rec in enumerate(load_json_records(path, what="tables file")):
        rid = str(i)
        db_id = _field(rec, "db_id", path=path, record=rid)
        if db_id in first_seen:
            raise BadInput(f"duplicate db_id {db_id!r} (first defined by record {first_seen[db_id]})",
                           uri=str(path), record=rid, field="db_id")
        rid = f"{i} ({db_id})"
        tables = _field(rec, "table_names_original", path=path, record=rid, kind=list)
        if not all(isinstance(t, str) and t for t in tables):
            raise BadInput("every table name must be a non-empty string", uri=str(path), record=rid,
                           field="table_names_original")
        raw_cols = _field(rec, "column_names_original", path=path, record=rid, kind=list)
        columns: list[tuple[int, str]] = []
        for j, col in enumerate(raw_cols):
            if j == 0:  # Spider's [-1, "*"]: key indices count from it
                if col != [-1, "*"]:
                    raise BadInput(f'entry 0 must be [-1, "*"], found {col!r}', uri=str(path), record=rid,
                                   field="column_names_original")
                continue
            ok = (isinstance(col, list) and len(col) == 2 and isinstance(col[0], int)
                  and isinstance(col[1], str) and 0 <= col[0] < len(tables))
            if not ok:
                raise BadInput(f"entry {j} must be [table index, name] with a table index below {len(tables)}",
                               uri=str(path), record=rid, field="column_names_original")
            columns.append((col[0], col[1]))

        pks: list[int | tuple[int, ...]] = []
        for pk in _list_field(rec.get("primary_keys", []), path=path, record=rid, field_name="primary_keys"):
            if isinstance(pk, list):
                pks.append(tuple(_key_index(k, len(columns), path, rid, "primary_keys") for k in pk))
            else:
                pks.append(_key_index(pk, len(columns), path, rid, "primary_keys"))
        fks: list[tuple[int, int]] = []
        for fk in _list_field(rec.get("foreign_keys", []), path=path, record=rid, field_name="foreign_keys"):
            if not isinstance(fk, list) or len(fk) != 2:
                raise BadInput(f"entry {fk!r} must be [column index, referenced column index]", uri=str(path),
                               record=rid, field="foreign_keys")
            fks.append((_key_index(fk[0], len(columns), path, rid, "foreign_keys"),
                        _key_index(fk[1], len(columns), path, rid, "foreign_keys")))
        schemas[db_id] = DbSchema(db_id=db_id, table_names=tuple(tables), columns=tuple(columns),
                                  primary_keys=tuple(pks), foreign_keys=tuple(fks), entry=rec)
        first_seen[db_id] = i
    return schemas


def _single_turn(records: list[Any], path: Path, *, sql_field: str, evidence: bool) -> list[Example]:
    out = []
    for i, rec in enumerate(records):
        rid = str(i)
        db_id = _field(rec, "db_id", path=path, record=rid)
        question = _field(rec, "question", path=path, record=rid)
        query = _field(rec, sql_field, path=path, record=rid)
        text = question
        if evidence:
            ev = _field(rec, "evidence", path=path, record=rid, required=False, nonempty=False)
            if ev and ev.strip():
                text = f"{question} {ev}"
        item = {**rec, "db_id": db_id, "question": question, "query": query}
        out.append(Example(db_id=db_id, question=text, query=query, history=(), record=rid, item=item))
    return out


def _multi_turn(records: list[Any], path: Path) -> list[Example]:
    out = []
    for i, rec in enumerate(records):
        rid = str(i)
        db_field = "database_id" if isinstance(rec, dict) and "database_id" in rec else "db_id"
        db_id = _field(rec, db_field, path=path, record=rid)
        turns = _field(rec, "interaction", path=path, record=rid, kind=list)
        history: list[tuple[str, str]] = []
        for t, turn in enumerate(turns, 1):
            tid = f"{i}, turn {t}"
            question = _field(turn, "utterance", path=path, record=tid)
            query = _field(turn, "query", path=path, record=tid)
            item = {"db_id": db_id, "question": question, "query": query, "interaction": i, "turn": t}
            out.append(Example(db_id=db_id, question=question, query=query, history=tuple(history),
                               record=tid, item=item))
            history.append((question, query))
    return out


def read_examples(fmt: str, path: Path) -> list[Example]:
    """Read a dataset file of format ``fmt`` into examples (one per turn for multi-turn formats)."""
    if fmt not in DATASET_FORMATS:
        raise BadInput(f"unknown dataset format {fmt!r}; formats are: {', '.join(DATASET_FORMATS)}",
                       field="format")
    path = Path(path)
    records = load_json_records(path, what="dataset")
    if fmt in MULTI_TURN_FORMATS:
        examples = _multi_turn(records, path)
    else:
        examples = _single_turn(records, path, sql_field="SQL" if fmt == "bird" else "query",
                                evidence=fmt == "bird")
    if not examples:
        raise BadInput("dataset holds no examples", uri=str(path))
    return examples
