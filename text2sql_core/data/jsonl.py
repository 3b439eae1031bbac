"""Reading the JSONL files steps hand to each other, with errors that name the file and the line.

One reader for every stage: a file a step publishes is read by several others (``dev_flat.jsonl`` by
predict, ``train_flat.jsonl`` by sft), and bad input must be reported the same way everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import BadInput

__all__ = ["read_numbered_records", "read_records"]

_MISSING = "missing: the prepare step publishes it"


def read_records(path: Path, *, missing: str = _MISSING) -> list[dict[str, Any]]:
    """Every non-blank line of ``path`` as a JSON object; ``BadInput`` names the file and line otherwise."""
    return [rec for _, rec in read_numbered_records(path, missing=missing)]


def read_numbered_records(path: Path, *, missing: str = _MISSING) -> list[tuple[int, dict[str, Any]]]:
    """Like :func:`read_records`, with each record's line number (1-based), for errors about its fields."""
    if not path.is_file():
        raise BadInput(missing, uri=str(path))
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInput(f"not valid JSON: {exc.msg}", uri=str(path), record=f"line {n}") from None
            if not isinstance(rec, dict):
                raise BadInput("expected a JSON object", uri=str(path), record=f"line {n}")
            rows.append((n, rec))
    return rows
