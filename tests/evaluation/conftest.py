"""Shared inputs of the evaluator tests: the Spider sample, its schemas and the official oracle."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from text2sql_core.evaluation.inputs import GoldExample, load_gold
from text2sql_core.evaluation.schema import Schema, foreign_key_maps

SYSTEMS = ("dailsql_gpt4", "c3sql_chatgpt")


@pytest.fixture(scope="session")
def gold(spider_sample: Path) -> list[GoldExample]:
    return load_gold(spider_sample / "dev_gold.sql")


@pytest.fixture(scope="session")
def schemas(spider_sample: Path, gold: list[GoldExample]) -> dict[str, Schema]:
    return {db: Schema.from_sqlite(spider_sample / "database" / db / f"{db}.sqlite")
            for db in sorted({g.db_id for g in gold})}


@pytest.fixture(scope="session")
def kmaps(spider_sample: Path) -> dict[str, dict[str, str]]:
    return foreign_key_maps(spider_sample / "tables.json")


def read_oracle(spider_sample: Path, system: str) -> list[dict[str, str]]:
    """``line dev_index db_id hardness ex em`` rows the official evaluator gave for ``system``."""
    with (spider_sample / "predictions" / f"{system}.official.tsv").open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))
