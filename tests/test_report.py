"""The run report from published artifacts: counts per level, empty levels hidden, what RL changed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from text2sql_core.config import RunConfig
from text2sql_core.graph import STEPS
from text2sql_core.report import compare_predictions, run_steps, write_run_report
from text2sql_core.store import LocalStore
from text2sql_core.store.manifest import publish

RUN = "report"
QUESTIONS = ["How many singers?", "Name every stadium.", "Oldest singer?", "Concerts in 2014?"]
GOLD = ["SELECT count(*) FROM singer", "SELECT name FROM stadium", "SELECT max(age) FROM singer",
        "SELECT count(*) FROM concert WHERE year = 2014"]
#: (SFT prediction, SFT right?, RL prediction, RL right?)
CASES = [("SELECT count(*) FROM singers", 0, "SELECT count(*) FROM singer", 1),  # fixed
         ("SELECT name FROM stadium", 1, "SELECT id FROM stadium", 0),  # broken
         ("SELECT age FROM singer", 0, "SELECT min(age) FROM singer", 0),  # changed, still wrong
         ("SELECT count(*) FROM concert WHERE year = 2014", 1, "SELECT count(*) FROM concert WHERE year = 2014", 1)]
LEVELS = ["easy", "medium", "easy", "medium"]


def _publish(store: LocalStore, tmp: Path, step: str, files: dict[str, str], metrics: dict) -> None:
    folder = tmp / "out" / step
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    kind = next(s.kind for s in STEPS if s.name == step)
    publish(store, f"runs/{RUN}/{step}", folder, run_id=RUN, step=step, kind=kind, config_hash="x",
            metrics=metrics, started_at=datetime.now(UTC))


def _evaluation(right: list[int]) -> tuple[dict[str, str], dict]:
    tsv = "line\tdb_id\thardness\tex\tem\terror\n" + "".join(
        f"{i + 1}\tconcert_singer\t{LEVELS[i]}\t{r}\t{r}\t\n" for i, r in enumerate(right))
    levels = {lv: {"count": LEVELS.count(lv)} for lv in ("easy", "medium", "hard", "extra")}
    ex = sum(right) / len(right)
    metrics = {"ex": ex, "em": ex, "ex_easy": 0.5, "ex_medium": 0.5, "ex_hard": 0.0, "ex_extra": 0.0, "n": 4}
    return {"per_example.tsv": tsv, "summary.json": json.dumps({"n": 4, "levels": levels})}, metrics


def test_report_hides_empty_levels_counts_questions_and_says_what_rl_changed(tmp_path):
    steps = run_steps()
    assert None not in (steps.evaluate_sft, steps.evaluate_rl, steps.predict_rl, steps.rl)
    store = LocalStore(tmp_path / "store")
    meta = "".join(json.dumps({"index": i, "db_id": "concert_singer", "question": q, "query": g}) + "\n"
                   for i, (q, g) in enumerate(zip(QUESTIONS, GOLD, strict=True)))
    _publish(store, tmp_path, steps.prepare, {"dev_meta.jsonl": meta}, {"dev_examples": 4})
    _publish(store, tmp_path, steps.sft, {"loss_log.jsonl": '{"step": 1, "loss": 2.0}\n'}, {"train_loss": 1.5})
    for predict, column in ((steps.predict_sft, 0), (steps.predict_rl, 2)):
        rows = "".join(json.dumps({"index": i, "db_id": "concert_singer", "prediction": c[column]}) + "\n"
                       for i, c in enumerate(CASES))
        _publish(store, tmp_path, predict, {"predictions.jsonl": rows}, {"n": 4})
    for evaluate, column in ((steps.evaluate_sft, 1), (steps.evaluate_rl, 3)):
        files, metrics = _evaluation([c[column] for c in CASES])
        _publish(store, tmp_path, evaluate, files, metrics)

    cfg = RunConfig.model_validate({"run_id": RUN, "workdir": str(tmp_path / "work"),
                                    "store": {"kind": "local", "local": {"path": str(store.root)}}})
    path = write_run_report(cfg)
    text = path.read_text()
    assert (path.parent / "report.png").is_file()
    assert "| easy | 2 | 0.500 |" in text and "| all | 4 | 0.500 | 0.500 |" in text
    assert "| hard |" not in text and "| extra |" not in text and "no hard / extra questions" in text
    assert f"## What RL changed ({steps.rl}, {steps.rl_kind})" in text
    assert "| fixed (wrong -> right) | 1 |" in text and "| broken (right -> wrong) | 1 |" in text
    assert "| changed, still wrong | 1 |" in text and "| changed, still right | 0 |" in text
    assert "dev #0 (concert_singer): How many singers?" in text and "  - RL: `SELECT count(*) FROM singer`" in text
    assert "(+0 of 4 questions)" in text
    # one metric per row of a step's own table, not a crammed cell
    assert f"**{steps.sft}**" in text and "| train_loss | 1.500 |" in text


def test_compare_predictions_aligns_by_index_and_skips_unchanged_sql():
    scores = [{"ex": "0"}, {"ex": "1"}]
    before = [{"index": 1, "prediction": "B"}, {"index": 0, "prediction": "A"}]
    after = [{"index": 0, "prediction": "A"}, {"index": 1, "prediction": "C"}]
    out = compare_predictions(scores, [{"ex": "0"}, {"ex": "1"}], before, after, [])
    assert [len(out[k]) for k in ("fixed", "broken", "changed_still_wrong", "changed_still_right")] == [0, 0, 0, 1]
    assert out["changed_still_right"][0]["sft"] == "B" and out["changed_still_right"][0]["rl"] == "C"


def test_a_wikisql_run_reports_one_row_without_hardness_levels(tmp_path):
    """WikiSQL's evaluation has no hardness levels and its EM is logical-form accuracy: the report says so."""
    steps = run_steps()
    store = LocalStore(tmp_path / "store")
    _publish(store, tmp_path, steps.sft, {"loss_log.jsonl": '{"step": 1, "loss": 2.0}\n'}, {"train_loss": 1.5})
    for evaluate, ex, em in ((steps.evaluate_sft, 0.5, 0.25), (steps.evaluate_rl, 0.75, 0.5)):
        summary = {"n": 4, "metric": "wikisql", "ex": ex, "em": em, "examples_with_error": 0, "seconds": 0.1}
        _publish(store, tmp_path, evaluate, {"summary.json": json.dumps(summary)}, {"ex": ex, "em": em, "n": 4})
    cfg = RunConfig.model_validate({"run_id": RUN, "workdir": str(tmp_path / "work"),
                                    "store": {"kind": "local", "local": {"path": str(store.root)}}})
    text = write_run_report(cfg).read_text()
    assert "logical-form accuracy (EM), scored as WikiSQL scores" in text
    assert "| 4 | 0.500 | 0.750 | 0.250 | 0.500 |" in text
    assert "hardness |" not in text and "| easy |" not in text and "The dev set has no" not in text
    assert "RL changes EX by +25.0 points (+1 of 4 questions)" in text
