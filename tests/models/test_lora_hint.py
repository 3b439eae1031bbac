"""The LoRA target hint lists the model's real linear layers, whatever their naming scheme."""

from __future__ import annotations

import pytest

from text2sql_core.errors import BadInput
from text2sql_core.models.config import LoRAConfig
from text2sql_core.models.lora import apply_lora


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=16))


def _neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=32, vocab_size=50, max_position_embeddings=16))


@pytest.mark.parametrize(("build", "expected"), [(_gpt2, "c_attn"), (_neox, "query_key_value")])
def test_hint_names_non_proj_layers(build, expected: str) -> None:
    with pytest.raises(BadInput, match=expected) as exc:
        apply_lora(build(), LoRAConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"]))
    assert "wte" not in str(exc.value) and "embed_in" not in str(exc.value)  # embeddings are not linear layers
