"""The tiny Llama: shape from the config, weights from the seed, saved as a normal HF model directory."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from text2sql_core.models.config import TinyModelConfig
from text2sql_core.models.tiny import build_tiny, build_tiny_model
from text2sql_core.models.tokenizer import train_tokenizer

TEXTS = ["SELECT name FROM singer WHERE age > 30", "SELECT count(*) FROM concert"] * 10
CFG = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=300, seed=3)


def test_seed_fixes_the_weights_and_leaves_the_global_rng_alone() -> None:
    tok = train_tokenizer(TEXTS, CFG.vocab_size)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny_model(CFG, tok)
    assert torch.equal(torch.rand(1), before)  # building used a private RNG stream
    b = build_tiny_model(CFG, tok)
    c = build_tiny_model(CFG.model_copy(update={"seed": 4}), tok)
    wa, wb, wc = (m.model.layers[0].self_attn.q_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.config.model_type == "llama" and a.config.num_hidden_layers == 2 and a.config.vocab_size == len(tok)
    assert a.config.pad_token_id == tok.pad_token_id


def test_build_tiny_saves_a_loadable_model_dir(tmp_path: Path) -> None:
    model, _tok = build_tiny(CFG, TEXTS, tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))
    ltok = AutoTokenizer.from_pretrained(str(tmp_path / "m"))
    ids = ltok("SELECT name FROM singer", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, loaded(ids).logits, atol=1e-6)
