"""Exact set match (EM): clause-by-clause comparison of two parsed queries, as the official does.

Before comparing, both queries are normalised the way upstream's ``rebuild_sql_val`` /
``rebuild_sql_col`` do it, with the same reach:

* values in ON / WHERE / HAVING become ``None`` (recursively into sub-queries used as values);
* DISTINCT flags become ``None`` unless ``keep_distinct``;
* a column that is in a foreign-key group and belongs to a FROM table is replaced by the group's
  representative column (``kmap`` from ``tables.json``).

The column rewrite reaches SELECT, ON, WHERE, GROUP BY, HAVING, ORDER BY and the
INTERSECT / UNION / EXCEPT parts (with the outer query's FROM tables); it does not reach
sub-queries used as values or in FROM. Those compare as written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .parse import SQL, WHERE_OPS
from .schema import Schema

__all__ = ["MatchError", "exact_match", "normalize_for_match", "partial_match"]


class MatchError(ValueError):
    """Raised for a structure the official normalisation cannot handle (upstream crashes there)."""


def _check_alternating(condition: list[Any]) -> None:
    for i, item in enumerate(condition):
        if (i % 2 == 0) != isinstance(item, tuple):
            raise MatchError("conditions not joined by AND/OR (the official evaluator crashes on this)")


# -- normalisation -------------------------------------------------------------------------------
def _strip_condition_values(condition: list[Any]) -> list[Any]:
    _check_alternating(condition)
    out: list[Any] = []
    for i, item in enumerate(condition):
        if i % 2 == 0:
            negated, op, vu, v1, v2 = item
            item = (negated, op, vu,
                    _strip_values(v1) if isinstance(v1, dict) else None,
                    _strip_values(v2) if isinstance(v2, dict) else None)
        out.append(item)
    return out


def _strip_values(sql: SQL) -> SQL:
    out = dict(sql)
    out["from"] = {**sql["from"], "conds": _strip_condition_values(sql["from"]["conds"])}
    for key in ("where", "having"):
        out[key] = _strip_condition_values(sql[key])
    for op in ("intersect", "except", "union"):
        out[op] = _strip_values(sql[op]) if sql[op] is not None else None
    return out


def _valid_columns(table_units: list[Any], schema: Schema) -> set[str]:
    """Column ids of the plain tables in FROM: the only ones the foreign-key rewrite may touch."""
    valid: set[str] = set()
    for kind, unit in table_units:
        if kind == "table_unit":
            valid |= schema.columns_of[unit]
    return valid


def _column_mapper(valid: set[str], kmap: dict[str, str], keep_distinct: bool) -> Callable[[Any], Any]:
    def col_unit(unit: Any) -> Any:
        if unit is None:
            return None
        agg, cid, distinct = unit
        if cid in kmap and cid in valid:
            cid = kmap[cid]
        return agg, cid, distinct if keep_distinct else None

    return col_unit


def _map_columns(sql: SQL, valid: set[str], kmap: dict[str, str], keep_distinct: bool) -> SQL:
    col = _column_mapper(valid, kmap, keep_distinct)

    def val_unit(vu: Any) -> Any:
        return None if vu is None else (vu[0], col(vu[1]), col(vu[2]))

    def condition(conds: list[Any]) -> list[Any]:
        _check_alternating(conds)
        return [(c[0], c[1], val_unit(c[2]), c[3], c[4]) if i % 2 == 0 else c for i, c in enumerate(conds)]

    distinct, units = sql["select"]
    out = dict(sql)
    out["select"] = (distinct if keep_distinct else None, [(agg, val_unit(vu)) for agg, vu in units])
    out["from"] = {"table_units": sql["from"]["table_units"], "conds": condition(sql["from"]["conds"])}
    out["where"] = condition(sql["where"])
    out["groupBy"] = [col(unit) for unit in sql["groupBy"]]
    out["having"] = condition(sql["having"])
    if len(sql["orderBy"]) > 0:
        direction, vus = sql["orderBy"]
        out["orderBy"] = (direction, [val_unit(vu) for vu in vus])
    for op in ("intersect", "except", "union"):
        out[op] = _map_columns(sql[op], valid, kmap, keep_distinct) if sql[op] is not None else None
    return out


def normalize_for_match(sql: SQL, schema: Schema, kmap: dict[str, str], *,
                        keep_distinct: bool = False) -> SQL:
    """The structure EM compares: values dropped, DISTINCT dropped, foreign keys unified."""
    valid = _valid_columns(sql["from"]["table_units"], schema)
    return _map_columns(_strip_values(sql), valid, kmap, keep_distinct)


# -- comparison ----------------------------------------------------------------------------------
def _greedy_matches(pred: list[Any], label: list[Any]) -> int:
    """Size of the multiset intersection (each label item matches at most one prediction item)."""
    remaining = list(label)
    count = 0
    for item in pred:
        if item in remaining:
            remaining.remove(item)
            count += 1
    return count


def _totals(pred: list[Any], label: list[Any]) -> tuple[int, int, int]:
    return len(label), len(pred), _greedy_matches(pred, label)


def _keywords(sql: SQL) -> set[str]:
    found = {name for name, key in (("where", "where"), ("group", "groupBy"), ("having", "having"))
             if len(sql[key]) > 0}
    if len(sql["orderBy"]) > 0:
        found.update((sql["orderBy"][0], "order"))
    found.update(key for key in ("limit", "except", "union", "intersect") if sql[key] is not None)
    connectors = sql["from"]["conds"][1::2] + sql["where"][1::2] + sql["having"][1::2]
    if "or" in connectors:
        found.add("or")
    units = sql["from"]["conds"][::2] + sql["where"][::2] + sql["having"][::2]
    if any(unit[0] for unit in units):
        found.add("not")
    ops = {unit[1] for unit in units}
    found.update(name for name in ("in", "like") if WHERE_OPS.index(name) in ops)
    return found


def _nested(pred: SQL | None, label: SQL | None) -> tuple[int, int, int]:
    hit = int(pred is not None and label is not None and exact_match(pred, label))
    return int(label is not None), int(pred is not None), hit


def partial_match(pred: SQL, label: SQL) -> dict[str, tuple[int, int, int]]:
    """``{component: (label_total, pred_total, matched)}`` for the ten official components."""
    res: dict[str, tuple[int, int, int]] = {}
    pred_sel, label_sel = pred["select"][1], label["select"][1]
    res["select"] = _totals(pred_sel, label_sel)
    res["select(no AGG)"] = _totals([u[1] for u in pred_sel], [u[1] for u in label_sel])
    pred_where, label_where = pred["where"][::2], label["where"][::2]
    res["where"] = _totals(pred_where, label_where)
    res["where(no OP)"] = _totals([u[2] for u in pred_where], [u[2] for u in label_where])

    # GROUP BY columns compare by column name only: "__t.c__" -> "c__" (upstream's split on ".").
    pred_group = [u[1] for u in pred["groupBy"]]
    label_group = [u[1] for u in label["groupBy"]]
    res["group(no Having)"] = _totals([c.split(".")[1] if "." in c else c for c in pred_group],
                                      [c.split(".")[1] if "." in c else c for c in label_group])
    has_pred, has_label = int(len(pred_group) > 0), int(len(label_group) > 0)
    res["group"] = (has_label, has_pred,
                    int(has_pred == has_label == 1 and pred_group == label_group
                        and pred["having"] == label["having"]))

    has_pred, has_label = int(len(pred["orderBy"]) > 0), int(len(label["orderBy"]) > 0)
    same_limit = (pred["limit"] is None) == (label["limit"] is None)
    same_order = bool(has_label) and pred["orderBy"] == label["orderBy"] and same_limit
    res["order"] = (has_label, has_pred, int(same_order))

    pred_ao, label_ao = set(pred["where"][1::2]), set(label["where"][1::2])
    res["and/or"] = (1, 1, 1) if pred_ao == label_ao else (len(pred_ao), len(label_ao), 0)

    parts = [_nested(pred[op], label[op]) for op in ("intersect", "except", "union")]
    res["IUEN"] = (sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts))

    pk, lk = _keywords(pred), _keywords(label)
    res["keywords"] = (len(lk), len(pk), len(pk & lk))
    return res


def _f1_is_one(label_total: int, pred_total: int, matched: int) -> bool:
    return label_total == pred_total and matched == pred_total


def _same_tables(pred_units: list[Any], label_units: list[Any]) -> bool:
    """Upstream compares the sorted lists; as multisets this also works with several sub-queries."""
    n = len(label_units)
    return len(pred_units) == n and _greedy_matches(pred_units, label_units) == n


def exact_match(pred: SQL, label: SQL) -> bool:
    """1 when every component matches and (for a gold with FROM) the FROM units are the same."""
    if not all(_f1_is_one(*t) for t in partial_match(pred, label).values()):
        return False
    if len(label["from"]["table_units"]) > 0:
        return _same_tables(pred["from"]["table_units"], label["from"]["table_units"])
    return True
