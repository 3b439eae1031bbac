"""What every RL adapter shares: a trainer that is not data-parallel refuses a multi-rank launch."""

from __future__ import annotations

import pytest

from text2sql_core import distributed
from text2sql_core.errors import BadInput
from text2sql_core.stages.rl_loop import require_one_process


def test_grpo_and_dpo_refuse_a_multi_rank_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    require_one_process("grpo")  # one process: fine
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(rank=1, size=2))
    with pytest.raises(BadInput, match="grpo is not data-parallel yet .* 2 ranks: set gpus: 1") as exc:
        require_one_process("grpo")
    assert exc.value.exit_code == 2 and exc.value.field == "rl.algorithm"
