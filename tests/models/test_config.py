"""ModelConfig: the three forms of `path`, the tiny shape checks, and what LoRA applies to."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from text2sql_core.models.config import LoRAConfig, ModelConfig, TinyModelConfig


def test_defaults_are_the_tiny_demo_model() -> None:
    cfg = ModelConfig()
    assert cfg.is_tiny and cfg.dtype == "fp32" and not cfg.trust_remote_code
    assert cfg.lora == LoRAConfig(enabled=True, r=64, alpha=32, dropout=0.05, target_modules=["q_proj", "v_proj"])
    # LoRA on random weights makes no sense: the tiny model trains all weights
    assert not cfg.uses_lora


@pytest.mark.parametrize("path, store_name", [("store://models/llama-7b", "llama-7b"),
                                              ("store://models/org/llama", "org/llama"),
                                              ("/models/llama", None)])
def test_path_forms(path: str, store_name: str | None) -> None:
    cfg = ModelConfig(path=path)
    assert cfg.store_name == store_name and not cfg.is_tiny and cfg.uses_lora


@pytest.mark.parametrize("path", ["", "store://runs/x", "store://models/", "store://models/../x"])
def test_bad_paths_are_rejected(path: str) -> None:
    with pytest.raises(ValidationError, match="path"):
        ModelConfig(path=path)


def test_tiny_shape_and_quantization_checks() -> None:
    with pytest.raises(ValidationError, match="divisible"):
        TinyModelConfig(hidden_size=100, num_heads=3)
    with pytest.raises(ValidationError, match="4-bit"):
        ModelConfig(path="tiny", quantization="4bit")
    with pytest.raises(ValidationError, match="QLoRA"):
        ModelConfig(path="/models/llama", quantization="4bit", lora=LoRAConfig(enabled=False))
    with pytest.raises(ValidationError, match="target_modules"):
        LoRAConfig(target_modules=[])
    with pytest.raises(ValidationError, match="extra"):
        ModelConfig.model_validate({"path": "tiny", "lora_rank": 8})
