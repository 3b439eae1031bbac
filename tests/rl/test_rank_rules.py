"""What every RL adapter shares under torchrun: global batch sizes, split evenly over the ranks or refused.

The world is faked (no process group is joined), so the collectives are the identity and only the
rank rules of the trainers' set-up run; tests/stages/test_distributed_runs.py runs them on 2 ranks.
"""

from __future__ import annotations

import pytest

from text2sql_core import distributed
from text2sql_core.errors import BadInput
from text2sql_core.rl.dpo.config import DPOConfig
from text2sql_core.rl.dpo.trainer import DPOTrainer
from text2sql_core.rl.grpo.config import GRPOConfig
from text2sql_core.rl.grpo.trainer import GRPOTrainer
from text2sql_core.rl.reward_model import add_lora
from text2sql_core.rl.rewards import ExecutionJudge
from text2sql_core.rl.rollout import PromptExample, prompt_batch, row_seed


@pytest.fixture
def adapter_policy(tiny_policy):
    return add_lora(tiny_policy, r=2, alpha=4, dropout=0.0, target_modules="all-linear", task="CAUSAL_LM")


def _fake_world(monkeypatch: pytest.MonkeyPatch, rank: int, size: int) -> None:
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(rank=rank, size=size))


def test_grpo_and_dpo_split_their_global_batches_or_refuse_an_uneven_one(
        monkeypatch: pytest.MonkeyPatch, adapter_policy, tiny_tokenizer, spider_rows, spider_sample) -> None:
    judge = ExecutionJudge(spider_sample / "database")
    examples = [PromptExample(r["prompt"], r["db_id"], r["query"]) for r in spider_rows[:8]]
    pairs = [{"prompt": r["prompt"], "db_id": r["db_id"], "chosen": r["query"], "rejected": "SELECT 1"}
             for r in spider_rows[:8]]
    _fake_world(monkeypatch, rank=1, size=3)
    with pytest.raises(BadInput, match="is 4, which 3 ranks cannot split evenly") as exc:
        GRPOTrainer(adapter_policy, tiny_tokenizer, examples, GRPOConfig(batch_size=4, num_generations=2), judge=judge,
                    seed=0)
    assert exc.value.exit_code == 2 and exc.value.field == "stages.grpo.batch_size"
    with pytest.raises(BadInput, match="is 4, which 3 ranks") as exc:
        GRPOTrainer(adapter_policy, tiny_tokenizer, examples,
                    GRPOConfig(batch_size=6, num_generations=2, mini_batch_size=4), judge=judge, seed=0)
    assert exc.value.field == "stages.grpo.mini_batch_size"
    with pytest.raises(BadInput, match="is 4, which 3 ranks") as exc:
        DPOTrainer(adapter_policy, tiny_tokenizer, pairs, DPOConfig(batch_size=4), seed=0)
    assert exc.value.exit_code == 2 and exc.value.field == "stages.dpo.batch_size"

    # an even split: rank 1 of 2 takes the second half of each step's planned prompts (and pairs)
    _fake_world(monkeypatch, rank=1, size=2)
    grpo = GRPOTrainer(adapter_policy, tiny_tokenizer, examples, GRPOConfig(batch_size=4, num_generations=2),
                       judge=judge, seed=0)
    assert grpo.batch_for_step(3) == prompt_batch(examples, 3, 4, 0)[2:]
    # its completions are rows 4..7 of the step's global batch: their sampling seeds say so
    assert grpo.row_seeds(4, step=3) == [row_seed(0, 3, r) for r in range(4, 8)]
    dpo = DPOTrainer(adapter_policy, tiny_tokenizer, pairs, DPOConfig(batch_size=4), seed=0)
    assert dpo.batch_for_step(2) == prompt_batch(pairs, 2, 4, 0)[2:]
