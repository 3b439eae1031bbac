"""A ``.sql`` predictions file: an empty last prediction counts; extra blank lines at the end do not."""

from __future__ import annotations

from pathlib import Path

import pytest

from text2sql_core.errors import BadInput
from text2sql_core.evaluation.inputs import load_predictions


@pytest.mark.parametrize(("text", "expected", "preds"), [
    ("SELECT 1\nSELECT 2\n\n", 3, ["SELECT 1", "SELECT 2", ""]),   # the model produced nothing for the last
    ("SELECT 1\nSELECT 2\n\n", 2, ["SELECT 1", "SELECT 2"]),        # a blank line after the last prediction
    ("SELECT 1\n\nSELECT 3", 3, ["SELECT 1", "", "SELECT 3"]),     # no final newline
    ("\n", 1, [""]),
    ("SELECT 1\r\n\r\n", 2, ["SELECT 1", ""]),
])
def test_blank_lines_at_the_end(tmp_path: Path, text: str, expected: int, preds: list[str]) -> None:
    f = tmp_path / "pred.sql"
    f.write_text(text, newline="")
    assert [p.sql for p in load_predictions(f, expected=expected)] == preds


def test_missing_predictions_still_fail(tmp_path: Path) -> None:
    f = tmp_path / "pred.sql"
    f.write_text("SELECT 1\n")
    with pytest.raises(BadInput, match="1 predictions for 2 gold"):
        load_predictions(f, expected=2)
