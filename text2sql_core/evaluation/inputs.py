"""Reading gold queries and predictions, refusing anything that would silently misalign them.

Gold: Spider's ``SQL<TAB>db_id`` lines, or a dataset JSON / JSON-lines file (Spider ``query``,
BIRD ``SQL`` with its ``difficulty``). Predictions: one SQL a line (as the official reads them:
the text before the first tab), the predict stage's ``predictions.jsonl`` (``{index, db_id,
prediction}``), or BIRD's ``{"0": "SQL\\t----- bird -----\\tdb_id"}`` JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.formats import load_json_records
from ..errors import BadInput

__all__ = ["GoldExample", "Prediction", "load_gold", "load_predictions"]

_BIRD_SEPARATOR = "\t----- bird -----\t"


@dataclass(frozen=True, slots=True)
class GoldExample:
    sql: str
    db_id: str
    #: BIRD's own level (simple / moderate / challenging) when the gold file carries one
    difficulty: str | None = None


@dataclass(frozen=True, slots=True)
class Prediction:
    sql: str
    #: the database the prediction was made for, when its file says so (checked against the gold)
    db_id: str | None = None


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise BadInput(f"{what} not found" if not path.exists() else f"{what} is not a file", uri=str(path))
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{what} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                       uri=str(path)) from None


def _lines(text: str) -> list[str]:
    """Lines split on newlines only (``str.splitlines`` would also split on U+2028 and friends)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while lines and not lines[-1].strip():  # trailing blank lines end the file, as upstream reads it
        lines.pop()
    return lines


def _one_line(sql: str) -> str:
    """A prediction as it would read back from a one-per-line file."""
    return sql.replace("\r", " ").replace("\n", " ").replace("\t", " ").strip()


def load_gold(path: str | Path) -> list[GoldExample]:
    """Gold examples in file order; a malformed line or record is a ``BadInput`` naming it."""
    path = Path(path)
    if path.suffix in (".json", ".jsonl"):
        return [_gold_record(rec, path, i) for i, rec in enumerate(load_json_records(path, what="gold file"))]
    gold = []
    for lineno, line in enumerate(_lines(_read_text(path, "gold file")), 1):
        if not line.strip():
            raise BadInput("blank line in the gold file (multi-turn sessions are not supported)",
                           uri=str(path), record=f"line {lineno}")
        parts = line.strip().split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise BadInput("expected `SQL<TAB>db_id`", uri=str(path), record=f"line {lineno}")
        gold.append(GoldExample(parts[0], parts[1].strip()))
    if not gold:
        raise BadInput("gold file holds no examples", uri=str(path))
    return gold


def _gold_record(rec: Any, path: Path, i: int) -> GoldExample:
    if not isinstance(rec, dict):
        raise BadInput("record must be a JSON object", uri=str(path), record=i)
    sql_field = next((k for k in ("query", "SQL", "output") if isinstance(rec.get(k), str)), None)
    if sql_field is None:
        raise BadInput("record has no gold SQL (`query`, `SQL` or `output`)", uri=str(path), record=i,
                       field="query")
    db_id = rec.get("db_id")
    if not isinstance(db_id, str) or not db_id:
        raise BadInput("missing or empty", uri=str(path), record=i, field="db_id")
    difficulty = rec.get("difficulty")
    return GoldExample(_one_line(rec[sql_field]), db_id, difficulty if isinstance(difficulty, str) else None)


def load_predictions(path: str | Path, *, expected: int) -> list[Prediction]:
    """``expected`` predictions in gold order; any other count is a ``BadInput``, never a misalignment."""
    path = Path(path)
    if path.suffix == ".jsonl":
        preds = _from_jsonl(path)
    elif path.suffix == ".json":
        preds = _from_json(path)
    else:
        # As upstream: each line stripped, the text before the first tab. A blank line is an empty prediction,
        # the last one included: only the final newline and blank lines beyond the expected count end the file.
        text = _read_text(path, "predictions file").replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        while len(lines) > expected and not lines[-1].strip():
            lines.pop()
        preds = [Prediction(line.strip().split("\t")[0]) for line in lines]
    if len(preds) != expected:
        raise BadInput(f"{len(preds)} predictions for {expected} gold examples: the files must align line "
                       "by line", uri=str(path))
    return preds


def _from_jsonl(path: Path) -> list[Prediction]:
    records = load_json_records(path, what="predictions file")
    indexed: dict[int, Prediction] = {}
    plain: list[Prediction] = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get("prediction"), str):
            raise BadInput("record must be an object with a string `prediction`", uri=str(path), record=i,
                           field="prediction")
        db_id = rec.get("db_id") if isinstance(rec.get("db_id"), str) else None
        pred = Prediction(_one_line(rec["prediction"]), db_id)
        if "index" in rec:
            index = rec["index"]
            if not isinstance(index, int) or isinstance(index, bool) or index < 0 or index in indexed:
                raise BadInput(f"`index` must be a new non-negative integer, got {index!r}", uri=str(path),
                               record=i, field="index")
            indexed[index] = pred
        else:
            plain.append(pred)
    if indexed and plain:
        raise BadInput("either every record has an `index` or none does", uri=str(path), field="index")
    if not indexed:
        return plain
    if sorted(indexed) != list(range(len(indexed))):
        missing = next(i for i in range(len(indexed)) if i not in indexed)
        raise BadInput(f"`index` values must be 0..{len(indexed) - 1}; {missing} is missing", uri=str(path),
                       field="index")
    return [indexed[i] for i in range(len(indexed))]


def _from_json(path: Path) -> list[Prediction]:
    try:
        data = json.loads(_read_text(path, "predictions file"))
    except json.JSONDecodeError as exc:
        raise BadInput(f"malformed JSON: {exc.msg} (line {exc.lineno})", uri=str(path)) from None
    if isinstance(data, dict):  # BIRD: {"0": "SQL\t----- bird -----\tdb_id", ...}
        keys = sorted(data, key=lambda k: int(k) if str(k).isdigit() else -1)
        if keys != [str(i) for i in range(len(data))]:
            raise BadInput("BIRD predictions must be keyed \"0\"..\"N-1\"", uri=str(path))
        out = []
        for k in keys:
            value = data[k]
            if not isinstance(value, str):
                raise BadInput("must be a string", uri=str(path), record=k)
            sql, _, db_id = value.partition(_BIRD_SEPARATOR)
            out.append(Prediction(_one_line(sql), db_id.strip() or None))
        return out
    if isinstance(data, list) and all(isinstance(x, str) for x in data):
        return [Prediction(_one_line(x)) for x in data]
    raise BadInput("expected a JSON list of SQL strings or BIRD's "
                   "{\"0\": \"SQL\\t----- bird -----\\tdb_id\"}", uri=str(path))
