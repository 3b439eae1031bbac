from __future__ import annotations

import pytest

from text2sql_core.errors import BadInput
from text2sql_core.graph import STEPS, get_step, step_names, topological
from text2sql_core.stages import KINDS


def test_graph_order_and_kinds() -> None:
    assert step_names() == ["prepare", "sft", "predict_sft", "evaluate_sft", "rm_data", "rm", "rl",
                            "predict_rl", "evaluate_rl", "export"]
    assert [s.name for s in topological()] == step_names()
    assert {s.kind for s in STEPS} <= set(KINDS)
    for s in STEPS:
        assert all(i in step_names()[: step_names().index(s.name)] for i in s.inputs)


def test_unknown_step() -> None:
    with pytest.raises(BadInput, match="unknown step 'sftt'"):
        get_step("sftt")


def test_renamed_steps_say_their_new_name() -> None:
    with pytest.raises(BadInput, match="step 'predict_ppo' is now called 'predict_rl'"):
        get_step("predict_ppo")


def test_every_rl_algorithm_has_a_graph_ending_in_the_rl_tail() -> None:
    from text2sql_core.graph import build_steps
    from text2sql_core.registry import RL_KINDS

    for algorithm in RL_KINDS:
        steps = build_steps(algorithm)
        names = [s.name for s in steps]
        assert names[:4] == ["prepare", "sft", "predict_sft", "evaluate_sft"]
        assert names[-4:] == ["rl", "predict_rl", "evaluate_rl", "export"]
        rl = next(s for s in steps if s.name == "rl")
        assert rl.kind == algorithm and all(i in names for i in rl.inputs)
        assert [s.name for s in topological(steps)] == names


def test_unknown_algorithm_is_bad_input() -> None:
    from text2sql_core.graph import build_steps

    with pytest.raises(BadInput, match="unknown RL algorithm 'a2c'"):
        build_steps("a2c")


def test_a_config_for_another_algorithm_says_what_to_write() -> None:
    from text2sql_core.config import RunConfig, parse_run_config

    with pytest.raises(BadInput, match=r"`stages.ppo` is set but `rl.algorithm` is 'grpo': add `rl: \{algorithm: ppo\}`"):
        parse_run_config({"rl": {"algorithm": "grpo"}, "stages": {"ppo": {"max_steps": 3}}})
    # a dumped config names every section with its defaults: that chooses nothing and round-trips
    dumped = RunConfig.model_validate({"rl": {"algorithm": "dpo"}}).model_dump(mode="json")
    assert "ppo" in dumped["stages"]
    assert parse_run_config(dumped).rl.algorithm == "dpo"


def test_graphs_of_grpo_and_dpo() -> None:
    from text2sql_core.config import RunConfig
    from text2sql_core.graph import steps_for

    grpo = RunConfig.model_validate({"rl": {"algorithm": "grpo"}})
    assert step_names(steps_for(grpo)) == ["prepare", "sft", "predict_sft", "evaluate_sft", "rl", "predict_rl",
                                           "evaluate_rl", "export"]
    with_rm = RunConfig.model_validate({"rl": {"algorithm": "grpo"},
                                        "stages": {"grpo": {"rewards": [{"name": "graded_execution"},
                                                                        {"name": "rm", "weight": 0.5}]}}})
    steps = steps_for(with_rm)
    assert "rm_data" in step_names(steps) and get_step("rl", steps).inputs == ("prepare", "sft", "rm")
    dpo = steps_for(RunConfig.model_validate({"rl": {"algorithm": "dpo"}}))
    assert get_step("rl", dpo).inputs == ("prepare", "sft", "rm_data") and "rm" not in step_names(dpo)
    with pytest.raises(BadInput, match="unknown step 'rm' in this run's graph"):
        get_step("rm", dpo)
