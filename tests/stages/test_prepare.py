"""The prepare stage through the real runner: published files, alignment, store:// inputs, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from text2sql_core.config import RunConfig
from text2sql_core.data.demo import write_demo
from text2sql_core.errors import BadInput
from text2sql_core.stages.base import run_step, step_prefix
from text2sql_core.store import open_store


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "demo"
    write_demo(out, seed=5, train_size=60, dev_size=20)
    return out


def _cfg(tmp_path: Path, data: dict, **stages: dict) -> RunConfig:
    return RunConfig.model_validate({
        "run_id": "p1", "workdir": str(tmp_path / "work"),
        "store": {"kind": "local", "local": {"path": str(tmp_path / "store")}},
        "data": data, "stages": {"prepare": stages.get("prepare", {})},
    })


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _published(tmp_path: Path, cfg: RunConfig) -> Path:
    """The step's files as a local directory, fetched through the store like a later stage would."""
    store = open_store(cfg.store)
    local = tmp_path / "published"
    shutil.rmtree(local, ignore_errors=True)
    store.get_tree(step_prefix(cfg.run_id, "prepare"), local)
    return local


def test_publishes_aligned_splits_schemas_and_databases(tmp_path: Path, demo_dir: Path) -> None:
    cfg = _cfg(tmp_path, {"format": "spider", "train": str(demo_dir / "train.json"), "dev": str(demo_dir / "dev.json"),
                          "tables": str(demo_dir / "tables.json"), "db_dir": str(demo_dir / "database")})
    outcome = run_step(cfg, "prepare")
    m = outcome.manifest.metrics
    assert (m["train_examples"], m["dev_examples"], m["databases"]) == (60, 20, 4)
    out = _published(tmp_path, cfg)
    raw_dev = json.loads((demo_dir / "dev.json").read_text())
    for split, n in (("train", 60), ("dev", 20)):
        sft, flat, meta = (_jsonl(out / f"{split}{s}.jsonl") for s in ("", "_flat", "_meta"))
        assert len(sft) == len(flat) == len(meta) == n
        for i, (r, f, mt) in enumerate(zip(sft, flat, meta, strict=True)):
            assert r["output"] == f["output"] == mt["query"] and mt["index"] == i and r["db_id"] == mt["db_id"]
            assert f["prompt"].endswith(r["input"]) and r["input"] == f"###Input:\n{mt['question']}\n\n###Response:"
    assert json.loads((out / "dev.json").read_text()) == raw_dev
    assert (out / "dev_gold.sql").read_text() == (demo_dir / "dev_gold.sql").read_text()
    assert json.loads((out / "tables.json").read_text()) == json.loads((demo_dir / "tables.json").read_text())
    for db in ("college", "retail_store", "music_festival", "tech_company"):
        rel = Path("database") / db / f"{db}.sqlite"
        assert (out / rel).read_bytes() == (demo_dir / rel).read_bytes()
    assert run_step(cfg, "prepare").skipped  # same config hash: nothing to do


def test_sample_values_and_only_used_databases(tmp_path: Path, spider_sample: Path) -> None:
    data = {"format": "spider", "train": str(spider_sample / "dev.json"), "dev": str(spider_sample / "dev.json"),
            "tables": str(spider_sample / "tables.json"), "db_dir": str(spider_sample / "database"),
            "max_train": 10, "max_dev": 5}
    cfg = _cfg(tmp_path, data, prepare={"sample_values": 2})
    assert run_step(cfg, "prepare").manifest.metrics["databases"] == 1
    out = _published(tmp_path, cfg)
    assert [t["db_id"] for t in json.loads((out / "tables.json").read_text())] == ["concert_singer"]
    assert sorted(p.name for p in (out / "database").iterdir()) == ["concert_singer"]
    assert len(_jsonl(out / "train.jsonl")) == 10 and len(_jsonl(out / "dev_meta.jsonl")) == 5
    assert "Country (e.g. 'Netherlands', 'United States')" in _jsonl(out / "dev.jsonl")[0]["instruction"]


def test_store_uris_fetch_only_used_databases(tmp_path: Path, demo_dir: Path) -> None:
    cfg = _cfg(tmp_path, {"format": "spider", "train": "store://datasets/demo/train.json",
                          "dev": "store://datasets/demo/dev.json", "tables": "store://datasets/demo/tables.json",
                          "db_dir": "store://datasets/demo/database", "max_train": 3, "max_dev": 2})
    store = open_store(cfg.store)
    store.put_tree(demo_dir, "datasets/demo")
    outcome = run_step(cfg, "prepare")
    used = {r["db_id"] for r in json.loads((demo_dir / "train.json").read_text())[:3]}
    used |= {r["db_id"] for r in json.loads((demo_dir / "dev.json").read_text())[:2]}
    assert outcome.manifest.metrics["databases"] == len(used)
    fetched = tmp_path / "work" / "p1" / "prepare" / "databases" / "datasets" / "demo" / "database"
    assert sorted(p.name for p in fetched.iterdir()) == sorted(used)


@pytest.mark.parametrize(("change", "match"), [
    ({"dev": "store://datasets/nope.json"}, r"store://datasets/nope.json, field `data.dev`: not found in the artifact"),
    ({"db_dir": "missing-dir"}, r"missing-dir, field `data.db_dir`: database directory not found"),
    ({"train": "store://datasets/demo/dev.json", "db_dir": "store://elsewhere"},
     r"dev.json, record 0, field `db_id`: db_id '\w+' has no database: store://elsewhere/\w+/\w+\.sqlite not found"),
])
def test_bad_data_section_is_bad_input_and_publishes_nothing(tmp_path: Path, demo_dir: Path, change: dict,
                                                              match: str) -> None:
    data = {"format": "spider", "train": str(demo_dir / "train.json"), "dev": str(demo_dir / "dev.json"),
            "tables": str(demo_dir / "tables.json"), "db_dir": str(demo_dir / "database"), **change}
    cfg = _cfg(tmp_path, data)
    store = open_store(cfg.store)
    store.put_tree(demo_dir, "datasets/demo")
    with pytest.raises(BadInput, match=match):
        run_step(cfg, "prepare")
    assert not store.exists(f"{step_prefix('p1', 'prepare')}/_manifest.json")
    assert store.list(step_prefix("p1", "prepare") + "/") == []
