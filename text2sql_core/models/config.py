"""The ``model`` section of a run: which causal LM to start from, in which dtype, and how to adapt it.

``RunConfig.model`` is a :class:`ModelConfig`. Every knob is declared here once, with its default and
description, so ``t2s config schema`` documents it. Nothing here imports torch: a run file is validated
on machines (the controller, CI) that never load a model.

``path`` takes three forms:

- ``tiny``: a small Llama-family model built from scratch by :mod:`text2sql_core.models.tiny`, with a
  tokenizer trained on the run's own training texts (no download); settings in ``tiny``;
- ``store://models/<name>``: base weights a user uploaded once to the artifact store under
  ``models/<name>/`` (a Hugging Face model directory: ``config.json``, weights, tokenizer files);
- anything else: a local Hugging Face model directory.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["STORE_MODEL_PREFIX", "LoRAConfig", "ModelConfig", "TinyModelConfig"]

STORE_MODEL_PREFIX = "store://models/"

Dtype = Literal["fp32", "bf16", "fp16"]


class LoRAConfig(BaseModel):
    """Low-rank adapters (PEFT LoRA) on a pretrained base; ignored for ``path: tiny``, which trains all weights."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Train LoRA adapters instead of all weights (real bases only).")
    r: int = Field(64, ge=1, le=4096, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (the update is scaled by alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        description="Names of the linear modules that get adapters (Llama naming: q_proj, k_proj, v_proj, "
                    "o_proj, gate_proj, up_proj, down_proj).",
    )

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value or any(not m.strip() for m in value):
            raise ValueError("target_modules must list at least one non-empty module name")
        return value


class TinyModelConfig(BaseModel):
    """Shape of the from-scratch Llama-family model used by the demo and the tests.

    Small on purpose: the whole demo pipeline trains on two CPU cores in minutes.
    """

    model_config = ConfigDict(extra="forbid")

    hidden_size: int = Field(128, ge=16, le=4096, description="Width of the residual stream.")
    num_layers: int = Field(2, ge=1, le=64, description="Number of decoder layers.")
    num_heads: int = Field(4, ge=1, le=128, description="Attention heads (hidden_size must divide evenly).")
    intermediate_size: int = Field(256, ge=16, description="Width of the SwiGLU MLP.")
    vocab_size: int = Field(4000, ge=300, le=200_000,
                            description="Upper bound on the locally trained tokenizer's vocabulary.")
    min_token_frequency: int = Field(2, ge=1, description="How often a pair of symbols must occur in the "
                                     "training texts to be merged into one token: higher values keep rare words "
                                     "as pieces that are frequent, so unseen values are spelled with trained tokens.")
    max_positions: int = Field(1024, ge=64, le=32768, description="Longest sequence (prompt + SQL) in tokens.")
    tie_embeddings: bool = Field(True, description="Share the input embedding and the output head.")
    seed: int = Field(0, description="Seed for the random initialisation (same seed, same weights).")

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


class ModelConfig(BaseModel):
    """Which causal LM the run starts from and how it is loaded."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field("tiny", description="`tiny`, `store://models/<name>` (uploaded base weights) or a local "
                                          "Hugging Face model directory.")
    dtype: Dtype = Field("fp32", description="Weights dtype: fp32, bf16 or fp16 (fp32 on CPU; LoRA adapters "
                                             "always train in fp32).")
    trust_remote_code: bool = Field(False, description="Allow model code shipped with the weights to run.")
    quantization: Literal["none", "4bit"] = Field(
        "none", description="`4bit`: load the base in 4-bit NF4 (QLoRA); needs bitsandbytes and a CUDA GPU.")
    lora: LoRAConfig = Field(default_factory=LoRAConfig, description="LoRA adapter settings.")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="Shape of the `tiny` model.")

    @field_validator("path")
    @classmethod
    def _path_form(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("model.path is empty: use `tiny`, `store://models/<name>` or a local directory")
        if value.startswith("store://"):
            if not value.startswith(STORE_MODEL_PREFIX):
                raise ValueError(f"{value!r}: base weights in the store live under {STORE_MODEL_PREFIX}<name>")
            name = value[len(STORE_MODEL_PREFIX):].strip("/")
            if not name or any(part in ("", ".", "..") for part in name.split("/")):
                raise ValueError(f"{value!r}: expected {STORE_MODEL_PREFIX}<name>")
        return value

    @model_validator(mode="after")
    def _tiny_has_no_quantization(self) -> ModelConfig:
        if self.is_tiny and self.quantization != "none":
            raise ValueError("model.quantization: 4-bit loading is for pretrained bases, not `tiny`")
        if self.quantization == "4bit" and not self.lora.enabled:
            raise ValueError("model.quantization: 4-bit weights cannot be trained directly; enable model.lora (QLoRA)")
        return self

    @property
    def is_tiny(self) -> bool:
        return self.path == "tiny"

    @property
    def store_name(self) -> str | None:
        """``<name>`` for ``store://models/<name>``, else None."""
        if self.path.startswith(STORE_MODEL_PREFIX):
            return self.path[len(STORE_MODEL_PREFIX):].strip("/")
        return None

    @property
    def uses_lora(self) -> bool:
        """LoRA only makes sense on a pretrained base: a from-scratch tiny model trains every weight."""
        return self.lora.enabled and not self.is_tiny
