"""Generation runs merged weights: no LoRA layer left, the same logits and the same greedy SQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from text2sql_core.models.config import LoRAConfig, TinyModelConfig
from text2sql_core.models.generation import generate, lora_layers, merged_for_inference
from text2sql_core.models.loading import load_causal_lm, load_tokenizer
from text2sql_core.models.lora import apply_lora, load_adapters
from text2sql_core.models.tiny import build_tiny

TEXTS = ["SELECT name FROM singer WHERE age > 30", "SELECT count(*) FROM concert WHERE year = 2014"] * 10
CFG = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=300, seed=3)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("merged")
    build_tiny(CFG, TEXTS, root / "base")
    dirs = []
    for k, seed in enumerate((1, 2)):  # an SFT and an RL adapter on every linear layer, B != 0
        torch.manual_seed(seed)
        peft = apply_lora(load_causal_lm(root / "base"), LoRAConfig(r=4, alpha=8, dropout=0.0,
                                                                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.5)
        dirs.append(root / f"adapter{k}")
        peft.save_pretrained(str(dirs[-1]))
    return root / "base", dirs


def test_merged_for_inference_keeps_the_function_and_drops_every_lora_layer(adapters):
    base, dirs = adapters
    tok = load_tokenizer(base)
    stacked = load_adapters(load_causal_lm(base), dirs, merge=False)
    assert lora_layers(stacked) > 0
    ids = tok(["SELECT name FROM"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = stacked(ids).logits
    before = [g.raw for g in generate(stacked, tok, ["SELECT name", "SELECT count(*)"], max_new_tokens=8)]
    merged = merged_for_inference(stacked)
    assert lora_layers(merged) == 0 and not hasattr(merged, "peft_config")
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, expected, atol=1e-4)
    assert [g.raw for g in generate(merged, tok, ["SELECT name", "SELECT count(*)"], max_new_tokens=8)] == before
    assert merged_for_inference(merged) is merged  # a plain model is left as it is
