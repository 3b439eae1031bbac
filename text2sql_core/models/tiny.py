"""The ``tiny`` model: a small Llama-family causal LM built from scratch, with a locally trained tokenizer.

It exists so the demo and the tests exercise the real code path (Hugging Face model classes, PEFT,
``generate``, the checkpoint format) on two CPU cores with no download: the same stages load a 7B
base from the store in production. Same texts and same :class:`TinyModelConfig` give the same
tokenizer and the same initial weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .config import TinyModelConfig
from .tokenizer import train_tokenizer

if TYPE_CHECKING:  # pragma: no cover
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

__all__ = ["build_tiny", "build_tiny_model", "tiny_llama_config"]


def tiny_llama_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase):  # -> LlamaConfig
    """The ``LlamaConfig`` for ``cfg`` with the vocabulary and special tokens of ``tokenizer``."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
    )


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """A randomly initialised ``LlamaForCausalLM``; the weights depend only on ``cfg`` (seed included)."""
    import torch
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(cfg, tokenizer)
    with torch.random.fork_rng(devices=[]):  # a private RNG: building must not shift the caller's stream
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def build_tiny(cfg: TinyModelConfig, texts: Iterable[str], out_dir: Path | None = None):
    """Train the tokenizer on ``texts``, build the model; save both to ``out_dir`` (a HF model dir) when given.

    Returns ``(model, tokenizer)``.
    """
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    model = build_tiny_model(cfg, tokenizer)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
    return model, tokenizer
