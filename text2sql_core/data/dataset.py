"""One split of a dataset turned into the files the later stages read, checked before anything is written.

``prepare_split`` validates everything (every ``db_id`` against the schemas, every database file
when a database directory is given) and only then returns the rows; the writers put each file in
place with a rename, so a bad dataset leaves no output behind and a crash leaves no half-written file.

Rows of a prepared split, aligned line by line:

* ``records``: DB-GPT-Hub SFT records ``{db_id, instruction, input, output, history}``;
* ``flats``: ``{prompt, output}`` for the reward model, PPO and prediction;
* ``metas``: ``{index, db_id, question, query}``, what reward computation needs to run gold SQL;
* ``items``: Spider-style dataset items (the source fields plus ``db_id``, ``question``, ``query``),
  written as ``dev.json`` for the evaluator.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInput
from .formats import MULTI_TURN_FORMATS, DbSchema, Example
from .prompt import flat_record, read_sample_values, schema_text, sft_record

__all__ = [
    "DatabaseDir",
    "PreparedSplit",
    "database_path",
    "gold_sql_line",
    "json_text",
    "jsonl_text",
    "prepare_split",
    "write_files_atomically",
]


@dataclass(frozen=True)
class PreparedSplit:
    examples: list[Example]
    records: list[dict[str, Any]]
    flats: list[dict[str, str]]
    metas: list[dict[str, Any]]
    items: list[dict[str, Any]]
    #: db_id -> local SQLite file, for the databases checked (empty without a database directory)
    databases: dict[str, Path]

    @property
    def db_ids(self) -> list[str]:
        """The databases this split uses, sorted."""
        return sorted({e.db_id for e in self.examples})


def database_path(db_dir: Path, db_id: str) -> Path:
    """Spider's layout: ``<db_dir>/<db_id>/<db_id>.sqlite``."""
    return Path(db_dir) / db_id / f"{db_id}.sqlite"


class DatabaseDir:
    """Where the ``<db_id>/<db_id>.sqlite`` files of a dataset live.

    A local directory, or (``fetch`` given) a place such as an artifact-store prefix from which
    ``fetch(db_id, dest)`` copies one database to ``dest`` and says whether it existed; only the
    databases a split uses are fetched. ``label`` names the place in error messages.
    """

    def __init__(self, root: Path, *, label: str | None = None,
                 fetch: Callable[[str, Path], bool] | None = None) -> None:
        self.root = Path(root)
        self.label = label or str(root)
        self._fetch = fetch
        if fetch is None and not self.root.is_dir():
            raise BadInput("database directory not found", uri=self.label)

    def where(self, db_id: str) -> str:
        return f"{self.label.rstrip('/')}/{db_id}/{db_id}.sqlite"

    def locate(self, db_id: str) -> Path | None:
        """The local path of ``db_id``'s database, or ``None`` when there is none."""
        path = database_path(self.root, db_id)
        if not path.is_file() and self._fetch is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not self._fetch(db_id, path):
                return None
        return path if path.is_file() else None


def prepare_split(examples: list[Example], schemas: Mapping[str, DbSchema], *, fmt: str, dataset: Path | str,
                  tables_path: Path | str, databases: DatabaseDir | None = None,
                  sample_values: int = 0) -> PreparedSplit:
    """Check ``examples`` (read from ``dataset``) against the schemas and databases, then build their rows.

    ``databases`` given: every ``db_id`` must have its SQLite file there. ``sample_values > 0`` needs
    ``databases`` (the values are read from them). Every problem is a ``BadInput`` naming the file,
    the record and the field.
    """
    if sample_values < 0:
        raise BadInput(f"must be >= 0, got {sample_values}", field="sample_values")
    if sample_values and databases is None:
        raise BadInput("sample values are read from the databases: give a database directory",
                       field="sample_values")
    db_field = "database_id" if fmt in MULTI_TURN_FORMATS else "db_id"
    located: dict[str, Path] = {}
    for ex in examples:
        if ex.db_id not in schemas:
            raise BadInput(f"db_id {ex.db_id!r} has no schema in {tables_path}", uri=str(dataset),
                           record=ex.record, field=db_field)
        if databases is not None and ex.db_id not in located:
            path = databases.locate(ex.db_id)
            if path is None:
                raise BadInput(f"db_id {ex.db_id!r} has no database: {databases.where(ex.db_id)} not found",
                               uri=str(dataset), record=ex.record, field=db_field)
            located[ex.db_id] = path

    texts: dict[str, str] = {}
    for db_id in sorted({e.db_id for e in examples}):
        samples = read_sample_values(located[db_id], schemas[db_id], sample_values) if sample_values else None
        texts[db_id] = schema_text(schemas[db_id], samples)

    records = [sft_record(ex, texts[ex.db_id]) for ex in examples]
    flats = [flat_record(r) for r in records]
    metas = [{"index": i, "db_id": ex.db_id, "question": ex.question, "query": ex.query}
             for i, ex in enumerate(examples)]
    return PreparedSplit(examples=examples, records=records, flats=flats, metas=metas,
                         items=[ex.item for ex in examples], databases=located)


def json_text(obj: Any) -> str:
    """A whole JSON file (dev.json, tables.json): indented like Spider's own files, UTF-8 kept readable."""
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def jsonl_text(rows: Iterable[Mapping[str, Any]]) -> str:
    """One JSON object a line, UTF-8 kept readable (questions in CHASE are Chinese)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def gold_sql_line(query: str, db_id: str) -> str:
    """A line of Spider's gold file ``SQL<TAB>db_id``; tabs and newlines inside the SQL become spaces."""
    return query.replace("\t", " ").replace("\r", " ").replace("\n", " ") + "\t" + db_id + "\n"


def write_files_atomically(contents: Mapping[Path, str | bytes]) -> None:
    """Write every file to a temporary sibling first, then rename them all into place.

    Either all files appear or none does (short of a crash between the renames); temporary files
    are removed on failure.
    """
    for path in contents:
        if Path(path).is_dir():
            raise BadInput("is a directory; give a file path", uri=str(path))
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in contents.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            staged.append((tmp, path))
            if isinstance(data, bytes):
                tmp.write_bytes(data)
            else:
                tmp.write_text(data, encoding="utf-8")
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
