"""The demo dataset: a small Spider-format dataset a tiny model can learn in minutes, but not perfectly.

Four SQLite databases (``demo_databases.py``) and 36 question templates, each with one fixed
phrasing, covering count, filters (=, >, <, BETWEEN, LIKE, AND/OR), aggregates, GROUP BY / HAVING,
ORDER BY / LIMIT, joins, nested IN / NOT IN / scalar subqueries and UNION / INTERSECT / EXCEPT.
A template instantiated on one table (or one foreign key, for joins) is a *combination*.

The dev split measures generalisation, so that SFT does not saturate at EX 1.0:

* **held-out values**: every value a question mentions (category values, thresholds, LIKE words,
  names, LIMIT / HAVING counts) comes from a pool split once into train and dev values; dev
  questions use dev values only;
* **held-out combinations**: for every template with at least four combinations, one (chosen by the
  seed) never appears in train; the template is still trained on the other tables, and the table
  with the other templates. About a fifth of dev (``heldout_share``) comes from these.

Every gold SQL is executed at generation: it must run and return a non-empty, non-trivial result
(not a lone 0 or NULL), and an ORDER BY ... LIMIT k must not cut through a tie. The same seed gives
byte-identical files.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInput
from .dataset import gold_sql_line, json_text
from .demo_databases import (
    DEMO_DATABASES,
    Column,
    DemoDatabase,
    Table,
    build_rows,
    tables_entry,
    write_sqlite,
)

__all__ = ["DEMO_SIZES", "TEMPLATES", "DemoDataset", "DemoExample", "Template", "generate_demo", "write_demo"]

#: (train examples, dev examples) of each ``--size``
DEMO_SIZES: dict[str, tuple[int, int]] = {"small": (600, 100), "default": (2400, 260)}
DEMO_FILES = ("train.json", "dev.json", "tables.json", "dev_gold.sql", "database")

#: share of a value pool held out for dev (at least one value of every pool)
DEV_VALUE_SHARE = 0.25
#: LIMIT and HAVING counts
K_POOL = tuple(range(2, 11))
#: BETWEEN a AND b: b is one of the next this-many thresholds after a (narrow, realistic ranges)
BETWEEN_WIDTH = 8
#: candidate fillings drawn per column choice of a combination (before execution checks)
MAX_CANDIDATES = 48


@dataclass(frozen=True)
class Template:
    """A question/SQL pair with holes. ``roles``: the columns it needs; ``slots``: the values it asks for.

    Single-table roles: ``L`` label, ``C`` category, ``M`` measure (``A``: a measure whose total makes
    sense, filling the same ``{M}`` placeholders). Join templates read a child
    table ``C1`` with a foreign key to a parent ``P``: roles ``PL`` (parent label, always), ``CL``,
    ``CM``, ``CC`` (the child's label, measure, category). ``tie``: SQL listing the sort key, LIMIT
    ``{k1}``; the instance is dropped when rows k and k+1 are equal.
    """

    id: str
    roles: tuple[str, ...]
    slots: tuple[str, ...]
    question: str
    sql: str
    tie: str = ""

    @property
    def join(self) -> bool:
        return "PL" in self.roles


def _t(id: str, roles: str, slots: str, question: str, sql: str, tie: str = "") -> Template:
    return Template(id, tuple(roles.split()), tuple(slots.split()), question, sql, tie)


_JOIN = "FROM {C1} AS T1 JOIN {P} AS T2 ON T1.{fk} = T2.{pk}"

TEMPLATES: tuple[Template, ...] = (
    # counting and listing
    _t("count_all", "", "", "How many {Tp} are there?", "SELECT count(*) FROM {T}"),
    _t("list_label", "L", "", "List the {Lps} of all {Tp}.", "SELECT {L} FROM {T}"),
    _t("distinct", "C", "", "What are the distinct {Cps} of all {Tp}?", "SELECT DISTINCT {C} FROM {T}"),
    _t("count_distinct", "C", "", "How many distinct {Cps} do the {Tp} have?",
       "SELECT count(DISTINCT {C}) FROM {T}"),
    # filters
    _t("select_eq", "L C", "v", "What are the {Lps} of the {Tp} whose {Cp} is {v}?",
       "SELECT {L} FROM {T} WHERE {C} = '{v}'"),
    _t("count_eq", "C", "v", "How many {Tp} have {Cp} {v}?", "SELECT count(*) FROM {T} WHERE {C} = '{v}'"),
    _t("select_gt", "L M", "n", "What are the {Lps} of the {Tp} with {Mp} greater than {n}?",
       "SELECT {L} FROM {T} WHERE {M} > {n}"),
    _t("select_lt", "L M", "n", "What are the {Lps} of the {Tp} with {Mp} less than {n}?",
       "SELECT {L} FROM {T} WHERE {M} < {n}"),
    _t("count_gt", "M", "n", "How many {Tp} have {Mp} greater than {n}?",
       "SELECT count(*) FROM {T} WHERE {M} > {n}"),
    _t("select_between", "L M", "a b", "What are the {Lps} of the {Tp} with {Mp} between {a} and {b}?",
       "SELECT {L} FROM {T} WHERE {M} BETWEEN {a} AND {b}"),
    _t("select_like", "L", "w", "Which {Tp} have a {Lp} containing {w}? List their {Lps}.",
       "SELECT {L} FROM {T} WHERE {L} LIKE '%{w}%'"),
    _t("select_and", "L C M", "v n",
       "What are the {Lps} of the {Tp} whose {Cp} is {v} and whose {Mp} is greater than {n}?",
       "SELECT {L} FROM {T} WHERE {C} = '{v}' AND {M} > {n}"),
    _t("select_or", "L C", "v v2", "What are the {Lps} of the {Tp} whose {Cp} is {v} or {v2}?",
       "SELECT {L} FROM {T} WHERE {C} = '{v}' OR {C} = '{v2}'"),
    # aggregates
    _t("avg_all", "M", "", "What is the average {Mp} of all {Tp}?", "SELECT avg({M}) FROM {T}"),
    _t("max_min", "M", "", "What are the maximum and minimum {Mp} of all {Tp}?",
       "SELECT max({M}), min({M}) FROM {T}"),
    _t("sum_eq", "C A", "v", "What is the total {Mp} of the {Tp} whose {Cp} is {v}?",
       "SELECT sum({M}) FROM {T} WHERE {C} = '{v}'"),
    # grouping
    _t("group_count", "C", "", "How many {Tp} are there for each {Cp}?",
       "SELECT {C}, count(*) FROM {T} GROUP BY {C}"),
    _t("group_avg", "C M", "", "What is the average {Mp} of the {Tp} for each {Cp}?",
       "SELECT {C}, avg({M}) FROM {T} GROUP BY {C}"),
    _t("having_count", "C", "k", "Which {Cps} have more than {k} {Tp}?",
       "SELECT {C} FROM {T} GROUP BY {C} HAVING count(*) > {k}"),
    _t("group_top", "C", "", "Which {Cp} has the most {Tp}?",
       "SELECT {C} FROM {T} GROUP BY {C} ORDER BY count(*) DESC LIMIT 1",
       "SELECT count(*) FROM {T} GROUP BY {C} ORDER BY count(*) DESC LIMIT {k1}"),
    # ordering
    _t("argmax", "L M", "", "What is the {Lp} of the {Ts} with the highest {Mp}?",
       "SELECT {L} FROM {T} ORDER BY {M} DESC LIMIT 1", "SELECT {M} FROM {T} ORDER BY {M} DESC LIMIT {k1}"),
    _t("argmin", "L M", "", "What is the {Lp} of the {Ts} with the lowest {Mp}?",
       "SELECT {L} FROM {T} ORDER BY {M} ASC LIMIT 1", "SELECT {M} FROM {T} ORDER BY {M} ASC LIMIT {k1}"),
    _t("top_k", "L M", "k", "List the {Lps} of the {k} {Tp} with the highest {Mp}.",
       "SELECT {L} FROM {T} ORDER BY {M} DESC LIMIT {k}", "SELECT {M} FROM {T} ORDER BY {M} DESC LIMIT {k1}"),
    _t("order_asc", "L M", "", "List the {Lps} of all {Tp} ordered by {Mp} from lowest to highest.",
       "SELECT {L} FROM {T} ORDER BY {M} ASC"),
    # nested and set operations on one table
    _t("above_avg", "L M", "", "What are the {Lps} of the {Tp} whose {Mp} is above the average?",
       "SELECT {L} FROM {T} WHERE {M} > (SELECT avg({M}) FROM {T})"),
    _t("union", "L C M", "v n", "List the {Lps} of the {Tp} with {Cp} {v}, together with those with {Mp} "
       "greater than {n}.", "SELECT {L} FROM {T} WHERE {C} = '{v}' UNION SELECT {L} FROM {T} WHERE {M} > {n}"),
    _t("intersect", "L C M", "v n", "List the {Lps} of the {Tp} with {Cp} {v} that also have {Mp} greater "
       "than {n}.", "SELECT {L} FROM {T} WHERE {C} = '{v}' INTERSECT SELECT {L} FROM {T} WHERE {M} > {n}"),
    _t("except", "L C M", "v n", "List the {Lps} of the {Tp} with {Cp} {v}, excluding those with {Mp} "
       "greater than {n}.", "SELECT {L} FROM {T} WHERE {C} = '{v}' EXCEPT SELECT {L} FROM {T} WHERE {M} > {n}"),
    # joins along a foreign key (child C1 -> parent P)
    _t("join_eq", "PL CL", "pv", "What are the {CLps} of the {C1p} whose {Ps} is {pv}?",
       "SELECT T1.{CL} " + _JOIN + " WHERE T2.{PL} = '{pv}'"),
    _t("join_count_eq", "PL", "pv", "How many {C1p} does the {Ps} {pv} have?",
       "SELECT count(*) " + _JOIN + " WHERE T2.{PL} = '{pv}'"),
    _t("join_group_count", "PL", "", "How many {C1p} does each {Ps} have? Show the {PLp} and the count.",
       "SELECT T2.{PL}, count(*) " + _JOIN + " GROUP BY T2.{PL}"),
    _t("join_argmax", "PL CM", "", "What is the {PLp} of the {Ps} of the {C1s} with the highest {CMp}?",
       "SELECT T2.{PL} " + _JOIN + " ORDER BY T1.{CM} DESC LIMIT 1",
       "SELECT T1.{CM} " + _JOIN + " ORDER BY T1.{CM} DESC LIMIT {k1}"),
    _t("join_pairs", "PL CL", "", "List the {CLp} of each {C1s} together with the {PLp} of its {Ps}.",
       "SELECT T1.{CL}, T2.{PL} " + _JOIN),
    _t("join_having", "PL", "k", "Which {Pp} have more than {k} {C1p}? Give their {PLps}.",
       "SELECT T2.{PL} " + _JOIN + " GROUP BY T2.{PL} HAVING count(*) > {k}"),
    _t("in_subquery", "PL CC", "cv", "What are the {PLps} of the {Pp} that have at least one {C1s} with {CCp} "
       "{cv}?", "SELECT {PL} FROM {P} WHERE {pk} IN (SELECT {fk} FROM {C1} WHERE {CC} = '{cv}')"),
    _t("not_in", "PL", "", "What are the {PLps} of the {Pp} that have no {C1p}?",
       "SELECT {PL} FROM {P} WHERE {pk} NOT IN (SELECT {fk} FROM {C1})"),
)


@dataclass(frozen=True)
class DemoExample:
    db_id: str
    question: str
    query: str
    template: str
    #: "<db>.<table>" or "<db>.<child>.<fk>><parent>": the template's combination
    combo: str
    #: (value pool, value) of every value the question mentions: what the dev hold-out is about
    values: tuple[tuple[str, str], ...]
    #: dev only: "values" (seen combination, unseen values) or "combination" (held-out combination)
    holdout: str = ""


@dataclass(frozen=True)
class DemoDataset:
    train: list[DemoExample]
    dev: list[DemoExample]
    tables: list[dict[str, Any]]
    #: db_id -> bytes of its SQLite file
    databases: dict[str, bytes]
    heldout_combos: tuple[tuple[str, str], ...]


def _fmt(x: float) -> str:
    """A threshold as a question and its SQL spell it: ``25``, ``3.5`` (never ``2.5e+06``)."""
    return f"{x:.6f}".rstrip("0").rstrip(".")


class _Values:
    """The data's values per pool, each pool split once into train and dev values."""

    def __init__(self, dbs: list[tuple[DemoDatabase, dict[str, list[tuple[Any, ...]]]]],
                 rng: random.Random) -> None:
        self.present: dict[str, list[str]] = {}  # pool key -> values present somewhere in the data
        for db, rows in dbs:
            for table in db.tables:
                for i, col in enumerate(table.columns):
                    column = [r[i] for r in rows[table.name]]
                    for key, values in self._pools(db, table, col, column).items():
                        self.present.setdefault(key, [])
                        self.present[key] = sorted(set(self.present[key]) | set(values), key=_natural)
        self.present["k"] = [str(k) for k in K_POOL]
        self.dev: dict[str, set[str]] = {}
        for key, values in self.present.items():
            if key.startswith(("words:", "label:")):  # split by their wider pool ("word", "labels:<pool>")
                continue
            n_dev = max(1, round(len(values) * DEV_VALUE_SHARE)) if len(values) > 1 else 0
            self.dev[key] = set(rng.sample(values, n_dev))

    @staticmethod
    def _pools(db: DemoDatabase, table: Table, col: Column, column: list[Any]) -> dict[str, list[str]]:
        if col.role == "category":
            return {f"cat:{col.pool}": [str(v) for v in column]}
        if col.role == "label":
            words = sorted({w for v in column for w in str(v).split() if len(w) >= 4})
            labels = [str(v) for v in column]
            return {"word": words, f"words:{db.db_id}.{table.name}": words,
                    f"labels:{col.pool}": labels, f"label:{db.db_id}.{table.name}": labels}
        if col.role == "measure":
            lo, hi = min(column), max(column)
            steps = range(int(lo // col.step) + 1, int(hi // col.step) + 1)
            cands = [_fmt(round(s * col.step, 6)) for s in steps if lo < s * col.step < hi]
            return {f"num:{db.db_id}.{table.name}.{col.name}": cands}
        return {}

    def pick(self, key: str, split: str, *, pool: str | None = None) -> list[str]:
        """Values of ``key`` present in the data that belong to ``split``; ``pool`` decides the split
        when it is shared wider than ``key`` (a word is a dev word in every column it appears in)."""
        dev = self.dev.get(pool or key, set())
        return [v for v in self.present.get(key, []) if (v in dev) == (split == "dev")]


def _natural(v: str) -> tuple[int, float, str]:
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


@dataclass(frozen=True)
class _Combo:
    template: Template
    db: DemoDatabase
    table: Table  # the table, or the child table of a join
    fk: tuple[str, str, str] | None = None  # (column, parent, parent column) for joins

    @property
    def key(self) -> str:
        base = f"{self.db.db_id}.{self.table.name}"
        return f"{base}.{self.fk[0]}>{self.fk[1]}" if self.fk else base


def _additive(table: Table) -> list[Column]:
    return [c for c in table.role("measure") if c.additive]


def _combos() -> list[_Combo]:
    out = []
    for template in TEMPLATES:
        for db in DEMO_DATABASES:
            for table in db.tables:
                if template.join:
                    for fk in table.fks:
                        parent = db.table(fk[1])
                        need = {"CL": table.label, "CM": table.role("measure"), "CC": table.role("category")}
                        if parent.label and all(need[r] for r in template.roles if r in need):
                            out.append(_Combo(template, db, table, fk))
                else:
                    need = {"L": table.label, "C": table.role("category"), "M": table.role("measure"),
                            "A": _additive(table)}
                    if all(need[r] for r in template.roles):
                        out.append(_Combo(template, db, table))
    return out


def _candidates(combo: _Combo, values: _Values, split: str,
                rng: random.Random) -> Iterator[tuple[dict[str, str], tuple]]:
    """(placeholder values, (pool, value) pairs) the combination allows with ``split``'s values.

    At most ``MAX_CANDIDATES`` per column choice, drawn at random: a combination needs a handful of
    examples, and enumerating every threshold pair of every column would dominate the run time.
    """
    t, tab, db = combo.template, combo.table, combo.db
    base = {"T": tab.name, "Ts": tab.singular, "Tp": tab.plural}
    choices: list[list[dict[str, str]]] = []
    if combo.fk:
        parent = db.table(combo.fk[1])
        pl = parent.label
        assert pl is not None
        base.update(C1=tab.name, C1s=tab.singular, C1p=tab.plural, P=parent.name, Ps=parent.singular,
                    Pp=parent.plural, fk=combo.fk[0], pk=combo.fk[2], PL=pl.name, PLp=pl.phrase, PLps=pl.plural,
                    _pl_pool=pl.pool)
        if "CL" in t.roles and tab.label:
            base.update(CL=tab.label.name, CLp=tab.label.phrase, CLps=tab.label.plural)
        if "CM" in t.roles:
            choices.append([{"CM": c.name, "CMp": c.phrase} for c in tab.role("measure")])
        if "CC" in t.roles:
            choices.append([{"CC": c.name, "CCp": c.phrase, "_cc_pool": c.pool} for c in tab.role("category")])
    else:
        if "L" in t.roles and tab.label:
            base.update(L=tab.label.name, Lp=tab.label.phrase, Lps=tab.label.plural)
        if "C" in t.roles:
            choices.append([{"C": c.name, "Cp": c.phrase, "Cps": c.plural, "_c_pool": c.pool}
                            for c in tab.role("category")])
        if "M" in t.roles or "A" in t.roles:
            cols = tab.role("measure") if "M" in t.roles else _additive(tab)
            choices.append([{"M": c.name, "Mp": c.phrase} for c in cols])
    for picked in itertools.product(*choices):
        ctx = dict(base)
        for p in picked:
            ctx.update(p)
        slot_options: list[list[dict[str, Any]]] = []
        for slot in t.slots:
            if slot in ("v", "v2"):
                continue
            if slot == "n" or slot == "a":
                key = f"num:{db.db_id}.{tab.name}.{ctx['M']}"
                if slot == "n":
                    slot_options.append([{"n": v, "_v": (key, v)} for v in values.pick(key, split)])
                else:
                    vals = values.pick(key, split)
                    slot_options.append([{"a": a, "b": b, "_v": (key, a), "_v2": (key, b)}
                                         for i, a in enumerate(vals) for b in vals[i + 1:i + 1 + BETWEEN_WIDTH]])
            elif slot == "w":
                words = values.pick(f"words:{db.db_id}.{tab.name}", split, pool="word")
                slot_options.append([{"w": w, "_v": ("word", w)} for w in words])
            elif slot == "pv":  # split by label pool: a person is a dev name in every table they appear in
                key, pool = f"label:{db.db_id}.{ctx['P']}", f"labels:{ctx['_pl_pool']}"
                slot_options.append([{"pv": v, "_v": (pool, v)} for v in values.pick(key, split, pool=pool)])
            elif slot == "cv":
                key = f"cat:{ctx['_cc_pool']}"
                slot_options.append([{"cv": v, "_v": (key, v)} for v in values.pick(key, split)])
            elif slot == "k":
                slot_options.append([{"k": k, "_v": ("k", k)} for k in values.pick("k", split)])
        if "v" in t.slots:
            key = f"cat:{ctx['_c_pool']}"
            vals = values.pick(key, split)
            if "v2" in t.slots:
                slot_options.append([{"v": a, "v2": b, "_v": (key, a), "_v2": (key, b)}
                                     for a, b in itertools.permutations(vals, 2)])
            else:
                slot_options.append([{"v": v, "_v": (key, v)} for v in vals])
        sizes = [len(o) for o in slot_options]
        total = math.prod(sizes)
        for index in rng.sample(range(total), min(total, MAX_CANDIDATES)):
            filled = []
            for options, size in zip(slot_options, sizes, strict=True):
                index, pos = divmod(index, size)
                filled.append(options[pos])
            full = dict(ctx)
            used: list[tuple[str, str]] = []
            for f in filled:
                used += [f[k] for k in ("_v", "_v2") if k in f]
                full.update({k: v for k, v in f.items() if not k.startswith("_")})
            yield full, tuple(used)


class _Checker:
    """Runs gold SQL on the demo databases: errors are bugs, empty or tied results are rejected."""

    def __init__(self, files: dict[str, Path]) -> None:
        self._conns = {db: sqlite3.connect(p.resolve().as_uri() + "?mode=ro", uri=True)
                       for db, p in files.items()}

    def close(self) -> None:
        for c in self._conns.values():
            c.close()

    def ok(self, db_id: str, sql: str, tie_sql: str, k: int) -> bool:
        conn = self._conns[db_id]
        rows = conn.execute(sql).fetchall()  # an error here is a template bug: let it surface
        if not rows or rows in ([(0,)], [(None,)]):
            return False
        if tie_sql:
            keys = conn.execute(tie_sql).fetchall()
            if len(keys) > k and keys[k - 1] == keys[k]:
                return False
        return True


def _instantiate(combo: _Combo, fill: dict[str, str], used: tuple, holdout: str) -> tuple[DemoExample, str, int]:
    t = combo.template
    k = int(fill.get("k", 1)) if "LIMIT {k}" in t.sql else 1
    ex = DemoExample(db_id=combo.db.db_id, question=t.question.format(**fill), query=t.sql.format(**fill),
                     template=t.id, combo=combo.key, values=used, holdout=holdout)
    tie = t.tie.format(**fill, k1=k + 1) if t.tie else ""
    return ex, tie, k


class _Sampler:
    """Draws distinct, checked examples from a combination's shuffled candidates, one at a time."""

    def __init__(self, combo: _Combo, values: _Values, split: str, rng: random.Random, checker: _Checker,
                 seen: set[str], holdout: str = "") -> None:
        cands = list(_candidates(combo, values, split, rng))
        rng.shuffle(cands)
        self._cands = cands
        self._combo, self._checker, self._seen, self._holdout = combo, checker, seen, holdout

    def draw(self) -> DemoExample | None:
        while self._cands:
            fill, used = self._cands.pop()
            ex, tie, k = _instantiate(self._combo, fill, used, self._holdout)
            if ex.question in self._seen or not self._checker.ok(ex.db_id, ex.query, tie, k):
                continue
            self._seen.add(ex.question)
            return ex
        return None


def _round_robin(samplers: list[_Sampler], n: int) -> list[DemoExample]:
    out: list[DemoExample] = []
    active = list(samplers)
    while active and len(out) < n:
        still = []
        for s in active:
            if len(out) >= n:
                break
            ex = s.draw()
            if ex is not None:
                out.append(ex)
                still.append(s)
        active = still
    return out


def generate_demo(seed: int = 0, *, train_size: int = DEMO_SIZES["default"][0],
                  dev_size: int = DEMO_SIZES["default"][1], heldout_share: float = 0.2) -> DemoDataset:
    """Build the demo databases and both splits in memory (see the module docstring for the design)."""
    if train_size < 1 or dev_size < 1:
        raise BadInput(f"split sizes must be >= 1, got train={train_size}, dev={dev_size}")
    if not 0 <= heldout_share <= 1:
        raise BadInput(f"must be between 0 and 1, got {heldout_share}", field="heldout_share")
    rng = random.Random(seed)
    built = [(db, build_rows(db, rng)) for db in DEMO_DATABASES]
    values = _Values(built, rng)
    with tempfile.TemporaryDirectory(prefix="t2s-demo-") as tmp:
        files = {}
        for db, rows in built:
            files[db.db_id] = Path(tmp) / f"{db.db_id}.sqlite"
            write_sqlite(db, rows, files[db.db_id])
        checker = _Checker(files)
        try:
            combos = _combos()
            by_template: dict[str, list[_Combo]] = {}
            for c in combos:
                by_template.setdefault(c.template.id, []).append(c)
            heldout = {(tid, rng.choice(cs).key) for tid, cs in by_template.items() if len(cs) >= 4}
            seen: set[str] = set()
            train_combos = [c for c in combos if (c.template.id, c.key) not in heldout]
            rng.shuffle(train_combos)
            train = _round_robin([_Sampler(c, values, "train", rng, checker, seen) for c in train_combos],
                                 train_size)
            n_heldout = round(dev_size * heldout_share)
            held = [c for c in combos if (c.template.id, c.key) in heldout]
            rng.shuffle(held)
            dev = _round_robin([_Sampler(c, values, "dev", rng, checker, seen, "combination") for c in held],
                               n_heldout)
            trained = {(e.template, e.combo) for e in train}  # a small train set does not reach every one
            with_values = [c for c in train_combos if c.template.slots and (c.template.id, c.key) in trained]
            dev += _round_robin([_Sampler(c, values, "dev", rng, checker, seen, "values") for c in with_values],
                                dev_size - len(dev))
        finally:
            checker.close()
        databases = {db.db_id: files[db.db_id].read_bytes() for db, _ in built}
    rng.shuffle(train)  # round-robin order would put one of every combination first
    rng.shuffle(dev)
    return DemoDataset(train=train, dev=dev, tables=[tables_entry(db) for db, _ in built], databases=databases,
                       heldout_combos=tuple(sorted(heldout)))


def _item(ex: DemoExample, dev: bool) -> dict[str, Any]:
    item: dict[str, Any] = {"db_id": ex.db_id, "question": ex.question, "query": ex.query, "template": ex.template}
    if dev:
        item["holdout"] = ex.holdout
    return item


def write_demo(out: Path, *, seed: int = 0, size: str = "default", train_size: int | None = None,
               dev_size: int | None = None, heldout_share: float = 0.2) -> DemoDataset:
    """Generate the dataset and write it to ``out`` in Spider's layout, all at once (see ``DEMO_FILES``).

    ``out`` must not exist, be empty, or hold an earlier demo dataset (replaced as a whole).
    """
    if size not in DEMO_SIZES:
        raise BadInput(f"unknown size {size!r}; sizes are: {', '.join(DEMO_SIZES)}", field="size")
    out = Path(out)
    if out.exists() and (not out.is_dir() or not set(os.listdir(out)) <= set(DEMO_FILES)):
        raise BadInput("exists and does not hold a demo dataset; choose a new or empty directory", uri=str(out))
    n_train, n_dev = DEMO_SIZES[size]
    ds = generate_demo(seed, train_size=train_size or n_train, dev_size=dev_size or n_dev,
                       heldout_share=heldout_share)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (stage / "train.json").write_text(json_text([_item(e, False) for e in ds.train]), encoding="utf-8")
        (stage / "dev.json").write_text(json_text([_item(e, True) for e in ds.dev]), encoding="utf-8")
        (stage / "tables.json").write_text(json_text(ds.tables), encoding="utf-8")
        (stage / "dev_gold.sql").write_text("".join(gold_sql_line(e.query, e.db_id) for e in ds.dev),
                                            encoding="utf-8")
        for db_id, data in ds.databases.items():
            path = stage / "database" / db_id / f"{db_id}.sqlite"
            path.parent.mkdir(parents=True)
            path.write_bytes(data)
        os.chmod(stage, 0o755)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(stage, out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
    return ds
