"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

pytest_plugins = ["tests.servers"]  # S3 test servers (moto, SeaweedFS): fixtures moto_s3, seaweedfs
pytest_plugins += ["tests.training_fixtures"]  # demo data + tiny SFT policies trained once per session


def shared_path() -> Path:
    """The workplace's shared data (Spider sample, fixtures): beside the checkout unless T2S_SHARED_DIR says."""
    return Path(os.environ.get("T2S_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = shared_path()
    if not (path / "spider-sample").is_dir():
        pytest.fail(f"shared data not found at {path}; set T2S_SHARED_DIR to the folder holding spider-sample/")
    return path


@pytest.fixture(scope="session")
def spider_sample(shared_dir: Path) -> Path:
    return shared_dir / "spider-sample"


#: session fixtures that train tiny policies to quality targets (minutes of CPU each)
TRAINING_FIXTURES = frozenset({"sft_trained", "sft_undertrained", "rm_run", "rm_well_run"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests built on the trained-policy fixtures get the ``training`` mark (``make test-training``)."""
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.training)
