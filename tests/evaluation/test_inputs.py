"""Gold and prediction files: every accepted format, and a clear error instead of any misalignment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from text2sql_core.errors import BadInput
from text2sql_core.evaluation.inputs import GoldExample, Prediction, load_gold, load_predictions


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_gold_formats(tmp_path: Path, spider_sample: Path):
    spider = load_gold(spider_sample / "dev_gold.sql")
    from_json = load_gold(spider_sample / "dev.json")
    assert len(spider) == 337 and [g.db_id for g in spider] == [g.db_id for g in from_json]
    assert spider[0] == GoldExample("SELECT count(*) FROM singer", "concert_singer")
    bird = _write(tmp_path / "bird.json", json.dumps([{"SQL": "SELECT 1\nFROM t", "db_id": "d",
                                                       "difficulty": "simple"}]))
    assert load_gold(bird) == [GoldExample("SELECT 1 FROM t", "d", "simple")]
    prepared = _write(tmp_path / "dev.jsonl", json.dumps({"db_id": "d", "output": "SELECT 2"}) + "\n")
    assert load_gold(prepared) == [GoldExample("SELECT 2", "d")]


@pytest.mark.parametrize(("text", "message"), [
    ("SELECT 1\n", r"line 1.*expected `SQL<TAB>db_id`"),
    ("SELECT 1\td\textra\n", "line 1.*expected"),
    ("SELECT 1\td\n\nSELECT 2\td\n", "line 2.*blank line"),
    ("", "no examples"),
])
def test_bad_gold_lines(tmp_path: Path, text, message):
    with pytest.raises(BadInput, match=message):
        load_gold(_write(tmp_path / "gold.sql", text))


def test_missing_gold_file(tmp_path: Path):
    with pytest.raises(BadInput, match="gold file not found"):
        load_gold(tmp_path / "nope.sql")


def test_prediction_lines_as_upstream_reads_them(tmp_path: Path):
    path = _write(tmp_path / "p.sql", "SELECT 1\tconcert_singer\n  SELECT 2  \n\nSELECT 4\n\n\n")
    expected = [Prediction("SELECT 1"), Prediction("SELECT 2"), Prediction(""), Prediction("SELECT 4")]
    assert load_predictions(path, expected=4) == expected


def test_prediction_count_must_match(tmp_path: Path):
    path = _write(tmp_path / "p.sql", "SELECT 1\nSELECT 2\n")
    with pytest.raises(BadInput, match="2 predictions for 3 gold examples"):
        load_predictions(path, expected=3)


def test_predict_stage_jsonl_is_ordered_by_index(tmp_path: Path):
    rows = [{"index": 1, "db_id": "b", "prediction": "SELECT\n2"},
            {"index": 0, "db_id": "a", "prediction": "SELECT 1"}]
    path = _write(tmp_path / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert load_predictions(path, expected=2) == [Prediction("SELECT 1", "a"), Prediction("SELECT 2", "b")]


@pytest.mark.parametrize(("rows", "message"), [
    ([{"index": 0, "prediction": "a"}, {"index": 0, "prediction": "b"}], "new non-negative integer"),
    ([{"index": 0, "prediction": "a"}, {"index": 2, "prediction": "b"}], "1 is missing"),
    ([{"index": 0, "prediction": "a"}, {"prediction": "b"}], "every record has an `index` or none"),
    ([{"index": 0, "sql": "a"}], "string `prediction`"),
])
def test_bad_jsonl_predictions(tmp_path: Path, rows, message):
    path = _write(tmp_path / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(BadInput, match=message):
        load_predictions(path, expected=len(rows))


def test_bird_prediction_json(tmp_path: Path):
    path = _write(tmp_path / "predict_dev.json", json.dumps({"1": "SELECT 2\t----- bird -----\tb",
                                                              "0": "SELECT 1\t----- bird -----\ta"}))
    assert load_predictions(path, expected=2) == [Prediction("SELECT 1", "a"), Prediction("SELECT 2", "b")]
