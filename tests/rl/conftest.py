"""Small real models for the RL unit tests: a locally trained tokenizer and a randomly initialised tiny Llama.

Random weights are enough to check the PPO plumbing (masks, reference = adapter off, checkpoint
round trips); learning itself is tested on the trained tiny SFT models in tests/stages.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def spider_rows(spider_sample):
    """Prompt-like rows over the spider-sample databases: {prompt, db_id, query}."""
    items = json.loads((spider_sample / "dev.json").read_text())
    return [{"prompt": f"-- {it['db_id']}\n-- {it['question']}\nSQL:", "db_id": it["db_id"], "query": it["query"]}
            for it in items]


@pytest.fixture(scope="session")
def tiny_tokenizer(spider_rows):
    from text2sql_core.models.tokenizer import train_tokenizer

    return train_tokenizer([r["prompt"] + " " + r["query"] for r in spider_rows], vocab_size=600)


@pytest.fixture
def tiny_policy(tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=512, tie_word_embeddings=True,
                      pad_token_id=tiny_tokenizer.pad_token_id, bos_token_id=tiny_tokenizer.bos_token_id,
                      eos_token_id=tiny_tokenizer.eos_token_id)
    return LlamaForCausalLM(cfg).eval()
