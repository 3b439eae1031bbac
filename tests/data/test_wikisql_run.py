"""``data.format: wikisql`` in a run: the prepare step reads WikiSQL's files, evaluate scores WikiSQL's way."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from tests.data.wikisql_fixture import QUESTIONS, write_wikisql
from text2sql_core.config import load_run_config
from text2sql_core.errors import BadInput
from text2sql_core.graph import STEPS
from text2sql_core.stages.base import run_step, step_prefix
from text2sql_core.store import LocalStore
from text2sql_core.store.manifest import publish

RUN = "wiki"
PREPARE = next(s.name for s in STEPS if s.kind == "prepare")
#: the first evaluate step and the predict step it scores (names from the graph)
EVALUATE = next(s for s in STEPS if s.kind == "evaluate")
PREDICT = next(i for i in EVALUATE.inputs if i != PREPARE)


def _config(tmp_path: Path, wiki: dict[str, Path], **data: object) -> Path:
    doc = {"run_id": RUN, "workdir": str(tmp_path / "work"),
           "store": {"kind": "local", "local": {"path": str(tmp_path / "store")}},
           "data": {"format": "wikisql", "train": str(wiki["questions"]), "dev": str(wiki["questions"]),
                    "tables": str(wiki["tables"]), "db_file": str(wiki["db"]), **data},
           "stages": {"evaluate": {"workers": 1}}}
    doc["data"] = {k: v for k, v in doc["data"].items() if v is not None}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _publish_predictions(store: LocalStore, tmp_path: Path, sqls: list[str], table_ids: list[str]) -> None:
    """What a predict step publishes, written by hand: the evaluate step scores any predictions artifact."""
    out = tmp_path / "predicted"
    out.mkdir(exist_ok=True)
    (out / "predictions.jsonl").write_text("".join(
        json.dumps({"index": i, "db_id": t, "prediction": sql}) + "\n"
        for i, (sql, t) in enumerate(zip(sqls, table_ids, strict=True))))
    publish(store, step_prefix(RUN, PREDICT), out, run_id=RUN, step=PREDICT, kind="predict",
            config_hash="by-hand", metrics={}, started_at=datetime.now(UTC))


def test_a_wikisql_run_prepares_and_scores_by_execution_and_logical_form(tmp_path: Path) -> None:
    wiki = write_wikisql(tmp_path / "wikisql")
    cfg = load_run_config(_config(tmp_path, wiki))
    prepared = run_step(cfg, PREPARE).manifest
    assert prepared.metrics["format"] == "wikisql" and prepared.metrics["dev_examples"] == len(QUESTIONS)
    folder = tmp_path / "store" / step_prefix(RUN, PREPARE)
    records = [json.loads(line) for line in (folder / "dev.jsonl").read_text().splitlines()]
    assert "School/Club Team" in records[0]["instruction"]  # the prompt shows the real header names
    metas = [json.loads(line) for line in (folder / "dev_meta.jsonl").read_text().splitlines()]
    assert metas[0]["query"] == 'SELECT "Player" FROM table_1_10015132_11 WHERE "School/Club Team" = \'Duke\''
    assert {p.path for p in prepared.files} >= {"wikisql/dev.jsonl", "wikisql/dev.tables.jsonl", "wikisql/dev.db",
                                                 "dev_flat.jsonl", "tables.json", "dev_gold.sql"}

    store = LocalStore(tmp_path / "store")
    gold = [m["query"] for m in metas]
    table_ids = [m["db_id"] for m in metas]
    _publish_predictions(store, tmp_path, gold, table_ids)
    perfect = run_step(cfg, EVALUATE.name).manifest.metrics
    n = len(QUESTIONS)
    assert perfect["n"] == n and perfect["ex"] == 1.0 and perfect["em"] == 1.0 and perfect["metric"] == "wikisql"
    assert not any(k.startswith(("ex_", "em_")) for k in perfect)  # WikiSQL has no hardness levels

    mistaken = list(gold)
    mistaken[0] = "SELECT col0 FROM table_1_10015132_11 WHERE col5 = 'DUKE'"  # database names, other case: right
    mistaken[1] = 'SELECT MAX("No.") FROM table_1_10015132_11'  # same answer, other logical form: EX only
    mistaken[2] = "SELECT MIN(col1) FROM table_1_10015132_11 WHERE col3 = 'Center'"  # wrong answer
    _publish_predictions(store, tmp_path, mistaken, table_ids)
    scored = run_step(cfg, EVALUATE.name)
    assert not scored.skipped  # other predictions: the step's hash changed
    assert scored.manifest.metrics["ex"] == (n - 1) / n and scored.manifest.metrics["em"] == (n - 2) / n
    summary = json.loads((tmp_path / "store" / step_prefix(RUN, EVALUATE.name) / "summary.json").read_text())
    assert summary["ex"] == (n - 1) / n

    # predictions for other tables than the prepared dev split asks about are refused, not scored
    _publish_predictions(store, tmp_path, gold, list(reversed(table_ids)))
    with pytest.raises(BadInput, match="not aligned"):
        run_step(cfg, EVALUATE.name)

    # the RL steps score SQL on Spider's one-file-per-database layout: refused by name, not run half-blind
    rl = next(s for s in STEPS if s.name == "rl")
    with pytest.raises(BadInput, match=r"field `data.format`.*does not run on WikiSQL"):
        run_step(cfg, rl.name)


@pytest.mark.parametrize(("data", "stages", "named"), [
    ({"db_file": None}, {}, "`data.db_file` is required with `data.format: wikisql`"),
    ({"tables": None}, {}, "`data.tables` is required with `data.format: wikisql`"),
    ({"db_dir": "data/wikisql"}, {}, "`data.db_dir` is not for WikiSQL"),
    ({"format": "spider"}, {}, "`data.db_file` is WikiSQL's SQLite file"),
    ({}, {"evaluate": {"metric": "bird"}}, "`stages.evaluate.metric` does not apply to `data.format: wikisql`"),
    ({}, {"predict": {"execution_guided": 2}}, "`stages.predict.execution_guided` runs candidates"),
])
def test_wikisql_run_config_errors_name_the_field(tmp_path: Path, data: dict, stages: dict, named: str) -> None:
    wiki = write_wikisql(tmp_path / "wikisql")
    path = _config(tmp_path, wiki, **data)
    if stages:
        doc = yaml.safe_load(path.read_text())
        doc["stages"].update(stages)
        path.write_text(yaml.safe_dump(doc))
    with pytest.raises(BadInput, match=rf"(?s)1 error.*{re.escape(named)}"):
        load_run_config(path)


def test_config_validate_of_a_wikisql_run_without_its_database_exits_2(tmp_path: Path) -> None:
    path = _config(tmp_path, write_wikisql(tmp_path / "wikisql"), db_file=None)
    r = subprocess.run([sys.executable, "-m", "text2sql_core.cli", "config", "validate", str(path)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "`data.db_file` is required" in r.stderr, r.stderr
