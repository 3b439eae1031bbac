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
#: the fixtures of the ``quality`` tests alone (a well-trained policy: about 20 CPU-minutes), outside ``make test``
QUALITY_FIXTURES = frozenset({"sft_trained", "rm_well_run"})
#: tests that take minutes without a trained fixture: started at the head of the second worker's share
LONG_TESTS = ("test_pipeline_end_to_end_on_real_spider_schemas", "test_whole_run_under_kueue",
              "test_sft_as_a_two_pod_indexed_job", "test_an_evicted_sft_pod", "test_prepare_sft_predict_evaluate",
              "test_kill_9_of_a_rank", "test_two_nodes_on_one_machine", "test_controller_killed_at_every_transition")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the trained-fixture tests ``training`` (``make test-training``), the well-trained ones also
    ``quality``; then order the run for two xdist workers.

    pytest-xdist's worksteal scheduler hands each worker a contiguous half of this list and later steals
    from the tail of a worker's queue. The tests on the shared trained fixtures come first, so the first
    worker starts building them at once (they are the longest chain: sft, then the reward model, then
    the RL runs), and the long independent tests start the second half, in parallel with that chain;
    the short tests fill in behind both and are what stealing moves.
    """
    trained, long_, short = [], [], []
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if TRAINING_FIXTURES & fixtures:
            item.add_marker(pytest.mark.training)
            if QUALITY_FIXTURES & fixtures:
                item.add_marker(pytest.mark.quality)
            trained.append(item)
        elif any(item.name.startswith(name) for name in LONG_TESTS):
            long_.append(item)
        else:
            short.append(item)
    half = max(0, (len(items) + 1) // 2 - len(trained))
    items[:] = trained + short[:half] + long_ + short[half:]
