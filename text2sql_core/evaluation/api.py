"""``evaluate(gold, predictions, ...) -> EvalResult``: Spider EX and EM, example by example.

The semantics are test-suite-sql-eval's (``evaluation.py --etype all``), so numbers compare with
published ones: the prediction's text ``value`` becomes ``1`` first (upstream does this to every
prediction); an unparseable prediction scores EM 0 but is still executed; EX runs the gold and the
prediction on every ``.sqlite`` file in ``DBDIR/<db_id>/`` and needs the same result on each.

Deliberate differences, all about inputs upstream crashes on or lets through:

* an empty prediction, or one with several statements, scores 0 on both metrics with the reason
  (upstream executes only the first statement, and crashes on a blank line);
* a write, a hang or any SQL error scores EX 0 with the reason (the sandbox refuses writes);
* a gold query that fails to parse or run scores 0 with the reason (upstream asserts);
* ``keep_distinct`` also keeps DISTINCT inside aggregates for EM (upstream's flag affects EX only).

Speed: gold queries run once per database (an identical job, e.g. a prediction equal to its gold,
shares the run), in a pool of sandbox processes that boots while the queries are parsed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import BadInput
from ..sql import DEFAULT_ROW_CAP, SQLResult
from .exact_match import MatchError, exact_match, normalize_for_match
from .execution import SQLRunner, bird_results_equal, results_equal
from .hardness import HARDNESS_LEVELS, hardness
from .inputs import GoldExample, Prediction
from .parse import SQL, ParseError, parse_sql
from .schema import Schema, foreign_key_maps
from .sqltext import exec_form, plug_alternatives, replace_cur_year, statement_count

__all__ = ["ETYPES", "METRICS", "EvalResult", "ExampleScore", "evaluate"]

ETYPES = ("all", "exec", "match")
METRICS = ("spider", "bird")
BIRD_LEVELS = ("simple", "moderate", "challenging")
UNKNOWN_LEVEL = "unknown"
DEFAULT_TIMEOUT_S = 30.0
#: the most value combinations tried per prediction with ``plug_value``
MAX_PLUG_ALTERNATIVES = 256
_MAX_ERROR_CHARS = 300


@dataclass(frozen=True, slots=True)
class ExampleScore:
    """One line of ``per_example.tsv``; ``ex`` / ``em`` are None when that metric was not asked for."""

    line: int
    db_id: str
    hardness: str
    ex: int | None
    em: int | None
    error: str = ""


@dataclass
class EvalResult:
    """Scores of every example plus how they were obtained."""

    examples: list[ExampleScore]
    etype: str
    metric: str
    plug_value: bool
    keep_distinct: bool
    levels: tuple[str, ...]
    seconds: float = 0.0
    queries_executed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.examples)

    def table(self) -> dict[str, dict[str, float | int | None]]:
        """``{level: {count, ex, em}}`` for every level and ``all``; an accuracy is None when not scored."""
        scored = {"ex": self.etype in ("all", "exec"), "em": self.etype in ("all", "match")}
        out: dict[str, dict[str, float | int | None]] = {}
        for level in (*self.levels, "all"):
            rows = [e for e in self.examples if level == "all" or e.hardness == level]
            out[level] = {"count": len(rows)}
            for metric, on in scored.items():
                values = [getattr(e, metric) or 0 for e in rows]
                out[level][metric] = (sum(values) / len(values) if values else 0.0) if on else None
        return out

    @property
    def ex(self) -> float | None:
        return self.table()["all"]["ex"]  # type: ignore[return-value]

    @property
    def em(self) -> float | None:
        return self.table()["all"]["em"]  # type: ignore[return-value]

    def metrics(self) -> dict[str, float | int]:
        """The stage metrics: ``ex``, ``em``, ``ex_<level>``, ``em_<level>``, ``n`` (scored metrics only)."""
        out: dict[str, float | int] = {}
        table = self.table()
        for level, row in table.items():
            suffix = "" if level == "all" else f"_{level}"
            for metric in ("ex", "em"):
                if row[metric] is not None:
                    out[f"{metric}{suffix}"] = round(float(row[metric]), 4)  # type: ignore[arg-type]
        out["n"] = self.n
        return out


def _clean(message: str) -> str:
    text = " ".join(str(message).split())
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS - 3] + "..."


def _db_files(db_dir: Path, db_id: str) -> tuple[Path, list[Path]]:
    """The schema file ``<db_id>.sqlite`` and every database of the test suite for ``db_id``."""
    folder = db_dir / db_id
    main = folder / f"{db_id}.sqlite"
    if not main.is_file():
        raise BadInput(f"no database {db_id}/{db_id}.sqlite in the database directory", uri=str(db_dir),
                       field="db_id")
    suite = sorted(p for p in folder.iterdir() if p.name.endswith(".sqlite") and p.is_file())
    return main, suite


@dataclass
class _Pending:
    """What one example still needs once its SQL has run."""

    score: dict[str, Any]
    errors: list[str]
    gold_jobs: list[tuple[Path, str]] = field(default_factory=list)
    #: per alternative prediction (the prediction first), its jobs: one per database
    pred_jobs: list[list[tuple[Path, str]]] = field(default_factory=list)
    order_matters: bool = False
    #: empty or several statements: scored 0 without running or parsing it
    refused: bool = False


def evaluate(
    gold: list[GoldExample],
    predictions: list[Prediction] | list[str],
    *,
    db_dir: str | Path,
    tables: str | Path | None = None,
    etype: Literal["all", "exec", "match"] = "all",
    metric: Literal["spider", "bird"] = "spider",
    plug_value: bool = False,
    keep_distinct: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    row_cap: int = DEFAULT_ROW_CAP,
    workers: int | None = None,
    cache: bool = True,
    progress: bool = False,
) -> EvalResult:
    """Score ``predictions`` against ``gold`` (aligned by position).

    ``tables`` (Spider's ``tables.json``) is needed for EM (its foreign keys). ``workers=0`` runs
    SQL in this process; ``cache=False`` re-executes gold queries and re-reads schemas for every
    example (the uncached baseline of ``benchmarks/eval_speed.py``).
    """
    started = time.perf_counter()
    if etype not in ETYPES:
        raise BadInput(f"etype must be one of {', '.join(ETYPES)}, got {etype!r}", field="etype")
    if metric not in METRICS:
        raise BadInput(f"metric must be one of {', '.join(METRICS)}, got {metric!r}", field="metric")
    if not timeout_s > 0:
        raise BadInput(f"the query timeout must be > 0 seconds, got {timeout_s}", field="timeout_s")
    if row_cap < 1:
        raise BadInput(f"the row cap must be >= 1, got {row_cap}", field="row_cap")
    if workers is not None and workers < 0:
        raise BadInput(f"workers must be >= 0 (0: run SQL in this process), got {workers}", field="workers")
    preds = [p if isinstance(p, Prediction) else Prediction(p) for p in predictions]
    if len(preds) != len(gold):
        raise BadInput(f"{len(preds)} predictions for {len(gold)} gold examples: they must align one to one")
    for i, (g, p) in enumerate(zip(gold, preds, strict=True)):
        if p.db_id is not None and p.db_id != g.db_id:
            raise BadInput(f"prediction is for database {p.db_id!r} but gold example {i + 1} is on "
                           f"{g.db_id!r}: predictions and gold are misaligned", record=i + 1, field="db_id")
    with_em, with_ex = etype in ("all", "match"), etype in ("all", "exec")
    db_dir = Path(db_dir)
    if not db_dir.is_dir():
        raise BadInput("database directory not found", uri=str(db_dir))
    kmaps: dict[str, dict[str, str]] = {}
    if with_em:
        if tables is None:
            raise BadInput("exact match needs the schemas file (tables.json) for its foreign keys",
                           field="tables")
        kmaps = foreign_key_maps(tables)
        missing = sorted({g.db_id for g in gold} - set(kmaps))
        if missing:
            raise BadInput(f"databases missing from the tables file: {', '.join(missing[:5])}",
                           uri=str(tables), field="db_id")
    files = {db_id: _db_files(db_dir, db_id) for db_id in dict.fromkeys(g.db_id for g in gold)}
    parser = _ParseCache(files, cache=cache)

    runner = SQLRunner(workers=workers if with_ex else 0, timeout_s=timeout_s, row_cap=row_cap, cache=cache,
                       progress=progress)
    with runner:  # the pool's workers boot while the jobs are planned
        pending = [_plan(i, g, p, files[g.db_id][1], metric=metric, with_em=with_em, with_ex=with_ex,
                         plug_value=plug_value, keep_distinct=keep_distinct)
                   for i, (g, p) in enumerate(zip(gold, preds, strict=True))]
        jobs = [job for item in pending
                for job in item.gold_jobs + [j for alt in item.pred_jobs for j in alt]]
        running = runner.submit(jobs)  # SQL runs in the pool while this process parses and matches
        for item, g, p in zip(pending, gold, preds, strict=True):
            _match(item, g, p, parser, kmaps.get(g.db_id, {}), metric=metric, with_em=with_em,
                   keep_distinct=keep_distinct)
        results = iter(running.result())
    examples = []
    for item in pending:
        gold_results = [next(results) for _ in item.gold_jobs]
        pred_results = [[next(results) for _ in alt] for alt in item.pred_jobs]
        if item.pred_jobs:
            item.score["ex"] = _execution_score(item, gold_results, pred_results, metric)
        examples.append(ExampleScore(**item.score, error="; ".join(_clean(e) for e in item.errors)))
    levels = _levels([e.hardness for e in examples], metric, gold)
    return EvalResult(examples, etype, metric, plug_value, keep_distinct, levels,
                      seconds=time.perf_counter() - started, queries_executed=runner.executed,
                      options={"timeout_s": timeout_s, "row_cap": row_cap, "workers": workers,
                               "cache": cache})


def _prediction_text(p: Prediction, metric: str) -> str:
    # Upstream replaces the text "value" by "1" in every prediction (a Spider placeholder); BIRD does not.
    return p.sql.replace("value", "1") if metric == "spider" else p.sql


def _plan(i: int, g: GoldExample, p: Prediction, suite: list[Path], *, metric: str, with_em: bool,
          with_ex: bool, plug_value: bool, keep_distinct: bool) -> _Pending:
    """Refuse an empty or multi-statement prediction, else list the SQL jobs its EX needs."""
    score: dict[str, Any] = {"line": i + 1, "db_id": g.db_id, "hardness": UNKNOWN_LEVEL, "ex": None,
                             "em": None}
    item = _Pending(score, [])
    pred_text = _prediction_text(p, metric)
    statements = statement_count(pred_text)
    if statements != 1:
        item.refused = True
        item.errors.append("empty prediction" if statements == 0 else
                           f"{statements} statements in the prediction (only one is allowed)")
        score.update(ex=0 if with_ex else None, em=0 if with_em else None)
        return item
    if not with_ex:
        return item
    if metric == "bird":
        gold_form, forms = g.sql, [pred_text]
    else:
        gold_form = exec_form(g.sql, keep_distinct=keep_distinct)
        item.order_matters = "order by" in gold_form.lower()
        forms = [exec_form(pred_text, keep_distinct=keep_distinct)]
        if plug_value:
            forms += plug_alternatives(gold_form, forms[0], limit=MAX_PLUG_ALTERNATIVES)
        gold_form, forms = replace_cur_year(gold_form), [replace_cur_year(f) for f in forms]
    item.gold_jobs = [(db, gold_form) for db in suite]
    item.pred_jobs = [[(db, form) for db in suite] for form in forms]
    return item


class _ParseCache:
    """Schemas and parses of one run, each computed once (a prediction equal to its gold is parsed once).

    With ``cache=False`` (the uncached baseline) the schema is read and the query parsed every time,
    as upstream does.
    """

    def __init__(self, files: dict[str, tuple[Path, list[Path]]], *, cache: bool) -> None:
        self._files = files
        self._cache = cache
        self._schemas: dict[str, Schema] = {}
        self._parses: dict[tuple[str, str], SQL | ParseError] = {}

    def schema(self, db_id: str) -> Schema:
        if not self._cache:
            return Schema.from_sqlite(self._files[db_id][0])
        if db_id not in self._schemas:
            self._schemas[db_id] = Schema.from_sqlite(self._files[db_id][0])
        return self._schemas[db_id]

    def parse(self, db_id: str, sql: str) -> SQL:
        """The parsed query (shared: callers must not modify it); raises ParseError."""
        key = (db_id, sql)
        hit = self._parses.get(key)
        if hit is None:
            try:
                hit = parse_sql(sql, self.schema(db_id))
            except ParseError as exc:
                hit = exc
            if self._cache:
                self._parses[key] = hit
        if isinstance(hit, ParseError):
            raise hit
        return hit


def _match(item: _Pending, g: GoldExample, p: Prediction, parser: _ParseCache, kmap: dict[str, str], *,
           metric: str, with_em: bool, keep_distinct: bool) -> None:
    """Hardness of the gold query and, when asked, the exact set match of the prediction."""
    own_level = g.difficulty if metric == "bird" else None
    gold_sql = None
    if with_em or not own_level:
        try:
            gold_sql = parser.parse(g.db_id, g.sql)
        except ParseError as exc:
            if with_em:
                item.errors.append(f"gold does not parse: {exc}")
    item.score["hardness"] = own_level or (hardness(gold_sql) if gold_sql is not None else UNKNOWN_LEVEL)
    if not with_em or item.refused:
        return
    item.score["em"] = 0
    if gold_sql is None:
        return
    schema = parser.schema(g.db_id)
    try:
        pred_sql = parser.parse(g.db_id, _prediction_text(p, metric))
        matched = exact_match(normalize_for_match(pred_sql, schema, kmap, keep_distinct=keep_distinct),
                              normalize_for_match(gold_sql, schema, kmap, keep_distinct=keep_distinct))
        item.score["em"] = int(matched)
    except (ParseError, MatchError) as exc:
        item.errors.append(f"parse: {exc}")


def _describe(result: SQLResult, db: Path, suite_size: int) -> str:
    where = f" on {db.name}" if suite_size > 1 else ""
    kind = result.error_kind.value if result.error_kind is not None else "error"
    return f"{kind}{where}: {result.error}"


def _alternative_error(item: _Pending, gold: list[SQLResult], alternative: list[SQLResult],
                       metric: str) -> str | None:
    """None when this alternative gives the gold result on every database, else why not.

    The reason is "" when the results merely differ (not an error worth reporting).
    """
    suite = [db for db, _ in item.gold_jobs]
    for db, g, p in zip(suite, gold, alternative, strict=True):
        if not p.ok:
            return f"exec: {_describe(p, db, len(suite))}"
        same = (bird_results_equal(g.rows, p.rows) if metric == "bird"
                else results_equal(g.rows, p.rows, order_matters=item.order_matters))
        if not same:
            return ""
    return None


def _execution_score(item: _Pending, gold: list[SQLResult], preds: list[list[SQLResult]], metric: str) -> int:
    """1 when some alternative of the prediction (itself first) gives the gold result on every database."""
    for (db, _), result in zip(item.gold_jobs, gold, strict=True):
        if not result.ok:
            item.errors.append(f"gold query failed: {_describe(result, db, len(gold))}")
            return 0
    verdicts = (_alternative_error(item, gold, alternative, metric) for alternative in preds)
    first = next(verdicts)
    if first is None or any(v is None for v in verdicts):
        return 1
    if first:
        item.errors.append(first)
    return 0


def _levels(found: list[str], metric: str, gold: list[GoldExample]) -> tuple[str, ...]:
    """Report rows in the conventional order; unexpected levels follow, sorted."""
    base = BIRD_LEVELS if metric == "bird" and any(g.difficulty for g in gold) else HARDNESS_LEVELS
    extra = sorted(set(found) - set(base))
    return (*base, *extra)
