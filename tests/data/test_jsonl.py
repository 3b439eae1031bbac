"""The shared JSONL reader: records in order, blank lines skipped, bad input named by file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from text2sql_core.data.jsonl import read_numbered_records, read_records
from text2sql_core.errors import BadInput


def test_records_with_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_records(path) == [{"a": 1}, {"a": 2}]
    assert read_numbered_records(path) == [(1, {"a": 1}), (3, {"a": 2})]


@pytest.mark.parametrize(("text", "message"), [
    ('{"a": 1}\n{"a": \n', r"line 2: not valid JSON"),
    ('{"a": 1}\n[1, 2]\n', r"line 2: expected a JSON object"),
])
def test_bad_lines_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(text)
    with pytest.raises(BadInput, match=message) as err:
        read_records(path)
    assert str(path) in str(err.value)


def test_a_missing_file_says_who_publishes_it(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="missing: the prepare step publishes it"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(BadInput, match="run rm_data first"):
        read_records(tmp_path / "nope.jsonl", missing="run rm_data first")
