from __future__ import annotations

import pytest

from text2sql_core.errors import BadInput
from text2sql_core.graph import STEPS, get_step, step_names, topological
from text2sql_core.stages import KINDS


def test_graph_order_and_kinds() -> None:
    assert step_names() == ["prepare", "sft", "predict_sft", "evaluate_sft", "rm_data", "rm", "ppo",
                            "predict_ppo", "evaluate_ppo"]
    assert [s.name for s in topological()] == step_names()
    assert {s.kind for s in STEPS} == set(KINDS)
    for s in STEPS:
        assert all(i in step_names()[: step_names().index(s.name)] for i in s.inputs)


def test_unknown_step() -> None:
    with pytest.raises(BadInput, match="unknown step 'sftt'"):
        get_step("sftt")
