"""rm_data: pair mining from sampled candidates and verified perturbations, the prompt-level split, the stage."""

from __future__ import annotations

import json

import pytest

from tests.stages.rl_runs import rm_run  # noqa: F401  (a fixture)
from text2sql_core.errors import BadInput
from text2sql_core.rl.rewards import ExecutionJudge
from text2sql_core.stages.base import run_step
from text2sql_core.stages.rm_data import RMDataConfig, mine_pairs, read_prompts, split_by_prompt

GOLD = "SELECT name FROM singer WHERE age > 30"


def row(index, query=GOLD, db="concert_singer"):
    return {"prompt": f"prompt {index}", "output": query, "index": index, "db_id": db, "question": "q",
            "query": query}


@pytest.fixture(scope="module")
def judge(spider_sample):
    return ExecutionJudge(spider_sample / "database")


def test_wrong_candidates_become_rejected_answers(judge):
    cands = [
        "SELECT name FROM singer WHERE age > 30 ORDER BY name",  # same result: correct, dropped
        "SELECT nme FROM singer",                                # does not run: wrong
        "SELECT name FROM singer WHERE age < 30",                # runs, wrong result
        "select NAME from SINGER where AGE < 30;",               # the same query again: deduplicated
        "SELECT",                                                # the empty prediction: not a negative
    ]
    pairs, counts = mine_pairs([row(7)], [cands], judge, RMDataConfig(max_pairs_per_prompt=5), seed=0)
    # every distinct wrong answer, in sampling order; each pair records its origin and where it came from
    assert [p["rejected"] for p in pairs] == ["SELECT nme FROM singer", "SELECT name FROM singer WHERE age < 30"]
    assert all(p["origin"] == "model" and p["chosen"] == GOLD and p["prompt"] == "prompt 7" and p["index"] == 7
               for p in pairs)
    assert counts["samples"] == 5 and counts["samples_correct"] == 1
    capped = {mine_pairs([row(7)], [cands], judge, RMDataConfig(max_pairs_per_prompt=1), seed=s)[0][0]["rejected"]
              for s in range(8)}
    assert capped == {"SELECT nme FROM singer", "SELECT name FROM singer WHERE age < 30"}  # a seeded sample


def test_perturbations_fill_in_where_the_model_made_no_mistake(judge):
    pairs, counts = mine_pairs([row(1)], [[GOLD]], judge, RMDataConfig(perturbations_per_prompt=3), seed=0)
    assert len(pairs) == 3
    assert all(p["origin"].startswith("perturb:") for p in pairs)
    for p in pairs:
        assert judge.verdict("concert_singer", GOLD, p["rejected"]).value == "mismatch"
    assert counts["prompts_without_pair"] == 0
    limited, _ = mine_pairs([row(1)], [[GOLD]], judge,
                            RMDataConfig(perturbations_per_prompt=3, perturbation_kinds=["flip_comparison"]), seed=0)
    assert [p["rejected"] for p in limited] == ["SELECT name FROM singer WHERE age < 30"]
    none, counts = mine_pairs([row(1)], [[GOLD]], judge, RMDataConfig(perturbations_per_prompt=0), seed=0)
    assert none == [] and counts["prompts_without_pair"] == 1


def test_prompts_with_a_broken_gold_query_are_skipped(judge):
    pairs, counts = mine_pairs([row(2, query="SELECT x FROM nowhere")], [["SELECT 1"]], judge, RMDataConfig(), 0)
    assert pairs == [] and counts["gold_errors"] == 1


def test_split_keeps_every_prompt_on_one_side():
    pairs = [{"index": i // 2, "n": i} for i in range(40)]
    train, held = split_by_prompt(pairs, 0.25, seed=0)
    assert len(train) + len(held) == 40
    assert {p["index"] for p in train}.isdisjoint({p["index"] for p in held})
    assert len({p["index"] for p in held}) == 5
    assert split_by_prompt(pairs, 0.25, seed=0) == (train, held)
    assert split_by_prompt(pairs, 0.0, seed=0) == (pairs, [])


def test_read_prompts_checks_alignment_and_fields(tmp_path):
    (tmp_path / "train_flat.jsonl").write_text('{"prompt": "p", "output": "SELECT 1"}\n' * 2)
    (tmp_path / "train_meta.jsonl").write_text('{"index": 0, "db_id": "d", "query": "SELECT 1"}\n')
    with pytest.raises(BadInput, match="has 2 rows but train_meta.jsonl has 1"):
        read_prompts(tmp_path)
    (tmp_path / "train_meta.jsonl").write_text('{"index": 0, "db_id": "d", "query": "SELECT 1"}\n{"index": 1}\n')
    with pytest.raises(BadInput, match=r"train_meta.jsonl, record line 2, field `db_id`: missing or empty"):
        read_prompts(tmp_path)
    with pytest.raises(BadInput, match="dev_flat.jsonl: missing from the prepare step"):
        read_prompts(tmp_path, "dev")
    (tmp_path / "train_meta.jsonl").write_text('{"index": 0, "db_id": "d", "query": "SELECT 1"}\n[1]\n')
    with pytest.raises(BadInput, match=r"train_meta.jsonl, record line 2: expected a JSON object"):
        read_prompts(tmp_path)


def test_config_rejects_unknown_perturbation_kinds():
    with pytest.raises(ValueError, match="unknown perturbation kind"):
        RMDataConfig(perturbation_kinds=["swap_join"])


@pytest.mark.slow
def test_stage_mines_pairs_from_the_undertrained_policy(sft_undertrained, tmp_path, shared_dir):
    cfg = sft_undertrained.clone(tmp_path, stages={"rm_data": {"limit": 24, "num_candidates": 4,
                                                               "max_new_tokens": 64, "eval_fraction": 0.25}})
    outcome = run_step(cfg, "rm_data")
    out = tmp_path / "store" / "runs" / cfg.run_id / "rm_data"
    train = [json.loads(line) for line in (out / "train_pairs.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (out / "eval_pairs.jsonl").read_text().splitlines()]
    stats = json.loads((out / "stats.json").read_text())
    reference = json.loads((shared_dir / "fixtures" / "reference_example.json").read_text())["rm_record"]
    assert train and held
    for pair in train + held:
        assert set(reference) <= set(pair)  # the rm_record format, plus origin / index / db_id
        assert pair["chosen"] != pair["rejected"]
        assert pair["origin"] == "model" or pair["origin"].startswith("perturb:")
    assert {p["index"] for p in train}.isdisjoint({p["index"] for p in held})
    metrics = outcome.manifest.metrics
    assert metrics["pairs"] == len(train) + len(held) == stats["pairs"]
    assert metrics["prompts"] == 24 and 0 <= metrics["sample_accuracy"] < 1
    # the under-trained policy makes mistakes: most pairs are its own
    assert stats["origins"].get("model", 0) >= len(train + held) // 2


@pytest.mark.slow
def test_copy_values_samples_take_their_values_from_the_question(rm_run):  # noqa: F811
    """With ``copy_values`` the policy's wrong answers are wrong in structure or column, not in a misspelt value."""
    import re

    from text2sql_core.models.value_copy import question_of

    assert rm_run.run_config.stages.rm_data.copy_values is True
    pairs = [json.loads(line) for name in ("train_pairs.jsonl", "eval_pairs.jsonl")
             for line in (rm_run.step_dir("rm_data") / name).read_text().splitlines()]
    literals = [(value, question_of(p["prompt"])) for p in pairs if p["origin"] == "model"
                for value in re.findall(r"'([^'%]+)'", p["rejected"])]
    assert len(literals) >= 50
    copied = sum(value in question for value, question in literals)
    assert copied / len(literals) >= 0.95, [v for v, q in literals if v not in q][:10]
