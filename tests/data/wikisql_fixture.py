"""A small dataset in WikiSQL's own three-file layout, written by the tests (nothing downloaded).

Two tables, every aggregation (none, MAX, MIN, COUNT, SUM, AVG) and operator (=, >, <), values with
single and double quotes, numbers given as text, and a text column holding numbers. The SQLite file
is laid out as WikiSQL's: ``table_<id>`` with columns ``col0..colN`` and text stored lower-cased.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

TABLES = [
    {"id": "1-10015132-11",
     "header": ["Player", "No.", "Nationality", "Position", "Years in Toronto", "School/Club Team"],
     "types": ["text", "real", "text", "text", "text", "text"],
     "rows": [["Antonio Lang", 21, "United States", "Guard-Forward", "1999-2000", "Duke"],
              ["Voshon Lenard", 2, "United States", "Guard", "2002-03", "Minnesota"],
              ["Shaquille O'Neal", 32, "United States", "Center", "2009-10", "LSU"],
              ['Kyle "Big" Lowry', 7, "United States", "Guard", "2012-19", "Villanova"],
              ["Jonas Valančiūnas", 17, "Lithuania", "Center", "2012-19", "Lietuvos Rytas"]]},
    {"id": "2-123",
     "header": ["Year", "Team", "Points"],
     "types": ["text", "text", "real"],
     "rows": [["1995", "Raptors", 30.5], ["1995", "Grizzlies", 12], ["1996", "Raptors", 41]]},
]

#: (question, table index, sel, agg, conds)
QUESTIONS = [
    ("Who played for Duke?", 0, 0, 0, [[5, 0, "Duke"]]),
    ("Highest number of a player from the United States?", 0, 1, 1, [[2, 0, "United States"]]),
    ("Lowest number of a guard?", 0, 1, 2, [[3, 0, "Guard"]]),
    ("How many players wore a number above 10?", 0, 0, 3, [[1, 1, "10"]]),
    ("Total points in 1995?", 1, 2, 4, [[0, 0, "1995"]]),
    ("Average points of teams below 35 points?", 1, 2, 5, [[2, 2, 35]]),
    ("What number did Shaquille O'Neal wear?", 0, 1, 0, [[0, 0, "Shaquille O'Neal"]]),
    ('Position of Kyle "Big" Lowry with number 7?', 0, 3, 0, [[0, 0, 'Kyle "Big" Lowry'], [1, 0, "7"]]),
]


def db_name(table_id: str) -> str:
    return "table_" + table_id.replace("-", "_")


def write_wikisql(folder: Path, questions: list[dict] | None = None) -> dict[str, Path]:
    """``dev.jsonl``, ``dev.tables.jsonl`` and ``dev.db`` in ``folder``; ``questions`` replace the default ones."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"questions": folder / "dev.jsonl", "tables": folder / "dev.tables.jsonl", "db": folder / "dev.db"}
    if questions is None:
        questions = [{"phase": 1, "table_id": TABLES[t]["id"], "question": q,
                      "sql": {"sel": sel, "agg": agg, "conds": conds}} for q, t, sel, agg, conds in QUESTIONS]
    paths["questions"].write_text("".join(json.dumps(q) + "\n" for q in questions))
    paths["tables"].write_text("".join(json.dumps(t) + "\n" for t in TABLES))
    conn = sqlite3.connect(paths["db"])
    for t in TABLES:
        cols = ", ".join(f"col{i} {'REAL' if ty == 'real' else 'TEXT'}" for i, ty in enumerate(t["types"]))
        conn.execute(f"CREATE TABLE {db_name(t['id'])} ({cols})")
        marks = ", ".join("?" for _ in t["header"])
        conn.executemany(f"INSERT INTO {db_name(t['id'])} VALUES ({marks})",
                         [[v.lower() if isinstance(v, str) else v for v in row] for row in t["rows"]])
    conn.commit()
    conn.close()
    return paths
