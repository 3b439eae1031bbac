"""Spider's hardness levels (easy / medium / hard / extra) of a parsed gold query.

The level is a function of three counts over the official structure. Two upstream quirks are part
of the definition and are kept, or published per-level scores would not be comparable:

* "aggregations" in WHERE count negated conditions (a cond unit's first field is ``not_op``);
* "aggregations" in HAVING count every condition *and every and/or connector*.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .parse import SQL, WHERE_OPS

__all__ = ["HARDNESS_LEVELS", "hardness", "nested_queries"]

HARDNESS_LEVELS = ("easy", "medium", "hard", "extra")

_LIKE = WHERE_OPS.index("like")


def _cond_units(sql: SQL) -> list[Any]:
    """Condition units of ON, WHERE and HAVING (each list sliced on its own, as upstream)."""
    return sql["from"]["conds"][::2] + sql["where"][::2] + sql["having"][::2]


def _connectors(sql: SQL) -> list[Any]:
    return sql["from"]["conds"][1::2] + sql["where"][1::2] + sql["having"][1::2]


def nested_queries(sql: SQL) -> list[SQL]:
    """Sub-queries used as condition values, then the intersect / except / union parts."""
    found = []
    for cond in _cond_units(sql):
        found.extend(v for v in (cond[3], cond[4]) if isinstance(v, dict))
    found.extend(sql[op] for op in ("intersect", "except", "union") if sql[op] is not None)
    return found


def _first_field_set(units: Iterable[Any]) -> int:
    """How many units have a non-zero first field (the aggregate id, for col and select units)."""
    return sum(1 for unit in units if unit[0] != 0)


def _component1(sql: SQL) -> int:
    count = sum(1 for present in (sql["where"], sql["groupBy"], sql["orderBy"]) if len(present) > 0)
    count += sql["limit"] is not None
    if sql["from"]["table_units"]:
        count += len(sql["from"]["table_units"]) - 1  # joins
    count += sum(1 for tok in _connectors(sql) if tok == "or")
    count += sum(1 for cond in _cond_units(sql) if cond[1] == _LIKE)
    return count


def _others(sql: SQL) -> int:
    aggs = _first_field_set(sql["select"][1])
    aggs += _first_field_set(sql["where"][::2])  # counts NOT conditions, see module doc
    aggs += _first_field_set(sql["groupBy"])
    if len(sql["orderBy"]) > 0:
        val_units = sql["orderBy"][1]
        aggs += _first_field_set([vu[1] for vu in val_units if vu[1]] + [vu[2] for vu in val_units if vu[2]])
    aggs += _first_field_set(sql["having"])  # counts and/or connectors too, see module doc
    return sum((aggs > 1, len(sql["select"][1]) > 1, len(sql["where"]) > 1, len(sql["groupBy"]) > 1))


def hardness(sql: SQL) -> str:
    """The official level of a parsed (gold) query."""
    c1, c2, others = _component1(sql), len(nested_queries(sql)), _others(sql)
    if c1 <= 1 and others == 0 and c2 == 0:
        return "easy"
    if (others <= 2 and c1 <= 1 and c2 == 0) or (c1 <= 2 and others < 2 and c2 == 0):
        return "medium"
    if ((others > 2 and c1 <= 2 and c2 == 0) or (2 < c1 <= 3 and others <= 2 and c2 == 0)
            or (c1 <= 1 and others == 0 and c2 <= 1)):
        return "hard"
    return "extra"
