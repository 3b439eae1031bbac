"""PPO on 2 gloo ranks: each rank rolls out its share of the step's prompts, and the ranks stay one model.

The rank rules: disjoint prompt shares that make up the global batch, one set of weights on every
rank after every update (gradients all-reduced), the same global metrics logged everywhere. That the
2-rank steps are the 1-rank steps (per-row seeded sampling) is tested on the stage, in
``tests/stages/test_distributed_runs.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_DRIVER = textwrap.dedent('''
    import copy, json, sys, torch
    from pathlib import Path
    from text2sql_core import distributed
    from text2sql_core.models.tokenizer import train_tokenizer
    from text2sql_core.rl.ppo.config import PPOConfig
    from text2sql_core.rl.ppo.trainer import PPOTrainer
    from text2sql_core.rl.reward_model import add_lora, sequence_classifier_from_policy
    from text2sql_core.rl.rewards import ExecutionJudge
    from text2sql_core.rl.rollout import PromptExample
    from transformers import LlamaConfig, LlamaForCausalLM

    w = distributed.init()
    torch.set_num_threads(1)
    sample, out = Path(sys.argv[1]), Path(sys.argv[2])
    items = json.loads((sample / "dev.json").read_text())
    rows = [{"prompt": f"-- {it['db_id']}\\n-- {it['question']}\\nSQL:", "db_id": it["db_id"], "query": it["query"]}
            for it in items]
    tok = train_tokenizer([r["prompt"] + " " + r["query"] for r in rows], vocab_size=600)
    torch.manual_seed(0)
    policy = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, intermediate_size=64, max_position_embeddings=512,
                                          tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).eval()
    torch.manual_seed(1)
    critic = add_lora(sequence_classifier_from_policy(copy.deepcopy(policy), tok), r=4, alpha=8, dropout=0.0,
                      target_modules="all-linear", task="SEQ_CLS").eval()
    actor = add_lora(policy, r=4, alpha=8, dropout=0.0, target_modules="all-linear", task="CAUSAL_LM").eval()
    torch.manual_seed(100 + w.rank)  # the ranks sample different responses for their different prompts
    cfg = PPOConfig(batch_size=4, mini_batch_size=2, max_new_tokens=8, reward={"mode": "hybrid"},
                    actor_learning_rate=1e-2, critic_learning_rate=1e-2, kl_coef=0.1)
    examples = [PromptExample(r["prompt"], r["db_id"], r["query"]) for r in rows[:8]]
    trainer = PPOTrainer(actor, critic, tok, examples, cfg, judge=ExecutionJudge(sample / "database"), seed=3)
    shares = [[e.prompt for e in trainer.batch_for_step(s)] for s in range(2)]
    records = [trainer.step() for _ in range(2)]
    weights = {n: p.detach().flatten().tolist()[:16] for n, p in actor.named_parameters() if p.requires_grad}
    critic_w = {n: p.detach().flatten().tolist()[:16] for n, p in critic.named_parameters() if p.requires_grad}
    json.dump({"shares": shares, "records": records, "actor": weights, "critic": critic_w},
              open(out / f"rank{w.rank}.json", "w"))
''')


@pytest.mark.slow
def test_two_ranks_share_the_prompts_and_stay_one_model(spider_sample: Path, tmp_path: Path) -> None:
    from text2sql_core.rl.rollout import PromptExample, prompt_batch

    driver = tmp_path / "ppo_driver.py"
    driver.write_text(_DRIVER)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        str(driver), str(spider_sample), str(tmp_path)], capture_output=True, text=True,
                       timeout=600, check=False, env={**os.environ, "T2S_COLLECTIVE_TIMEOUT_S": "120"})
    assert r.returncode == 0, r.stderr[-4000:]
    got = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in range(2)]

    items = json.loads((spider_sample / "dev.json").read_text())
    examples = [PromptExample(f"-- {it['db_id']}\n-- {it['question']}\nSQL:", it["db_id"], it["query"])
                for it in items[:8]]
    for step in range(2):
        whole = [e.prompt for e in prompt_batch(examples, step, 4, 3)]
        assert got[0]["shares"][step] + got[1]["shares"][step] == whole  # disjoint halves of the global batch
    # the metrics are global: the same record on both ranks, step for step
    for a, b in zip(got[0]["records"], got[1]["records"], strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == pytest.approx(
            {k: v for k, v in b.items() if k != "seconds"}, rel=1e-6)
    # every update was the same on both ranks (all-reduced gradients): one actor, one critic
    for part in ("actor", "critic"):
        assert got[0][part].keys() == got[1][part].keys()
        for name, values in got[0][part].items():
            assert values == pytest.approx(got[1][part][name], rel=1e-5, abs=1e-6), (part, name)
