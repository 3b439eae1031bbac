"""LoRA adapters (PEFT) and 4-bit QLoRA loading checks.

- :func:`apply_lora` wraps a pretrained causal LM in a trainable PEFT LoRA adapter; on a 4-bit base
  it first runs PEFT's k-bit preparation (QLoRA).
- :func:`load_adapters` puts saved adapters (PEFT format: ``adapter_config.json`` +
  ``adapter_model.safetensors``) back on a base, in order. Each adapter of a lineage was trained on the
  base *with the earlier adapters merged in*, so unquantized bases merge them one by one and return a
  plain ``transformers`` model; a 4-bit base cannot absorb a merge, so its adapters stay attached and
  are all activated together (inference only).
- :func:`require_4bit_support` raises a clear ``BadInput`` when bitsandbytes or a CUDA GPU is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import BadInput
from .config import LoRAConfig

__all__ = ["apply_lora", "load_adapters", "merge_lora", "peft_lora_config", "require_4bit_support",
           "trainable_parameters"]


def require_4bit_support() -> None:
    """4-bit NF4 loading needs the bitsandbytes package and a CUDA GPU; say which one is missing."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise BadInput("model.quantization is `4bit` but the bitsandbytes package is not installed "
                       "(pip install bitsandbytes), or set model.quantization: none", field="model.quantization")
    import torch

    if not torch.cuda.is_available():
        raise BadInput("model.quantization is `4bit` but no CUDA GPU is visible; 4-bit QLoRA runs on GPUs "
                       "only: set model.quantization: none to train on this machine", field="model.quantization")


def peft_lora_config(cfg: LoRAConfig):  # -> peft.LoraConfig
    from peft import LoraConfig, TaskType

    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=list(cfg.target_modules), bias="none", task_type=TaskType.CAUSAL_LM)


def _is_quantized(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def _linear_layer_names(model: Any) -> list[str]:
    """Names of the leaf layers LoRA can target: any 2-D weight that is not an embedding (q_proj, GPT-2's
    c_attn Conv1D, NeoX's query_key_value), attention layers first."""
    found: set[str] = set()
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if (name and not any(True for _ in module.children()) and getattr(weight, "ndim", 0) == 2
                and "Embedding" not in type(module).__name__):
            found.add(name.rsplit(".", 1)[-1])
    attention = ("q", "k", "v", "qkv", "attn", "query", "key", "value")
    return sorted(found, key=lambda n: (not any(a in n for a in attention), n))


def apply_lora(model: Any, cfg: LoRAConfig, *, gradient_checkpointing: bool = False) -> Any:
    """Wrap ``model`` in a new trainable LoRA adapter; only the adapter's weights require gradients.

    Raises ``BadInput`` naming the missing module when ``target_modules`` matches nothing.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in cfg.target_modules if m not in names]
    if missing:
        raise BadInput(f"LoRA target modules {missing} are not in this model (its linear layers include "
                       f"{_linear_layer_names(model)[:12]})", field="model.lora.target_modules")
    if _is_quantized(model):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        # checkpointed blocks need an input that requires grad, or the frozen base cuts the graph
        model.enable_input_require_grads()
    return get_peft_model(model, peft_lora_config(cfg))


def merge_lora(model: Any) -> Any:
    """The base model with the adapter's update added to its weights (a plain ``transformers`` model)."""
    return model.merge_and_unload()


def load_adapters(model: Any, adapter_dirs: Sequence[Path], *, merge: bool | None = None) -> Any:
    """Apply saved adapters in lineage order; see the module docstring for merge semantics.

    ``merge`` defaults to True unless the base is quantized.
    """
    if not adapter_dirs:
        return model
    from peft import PeftModel

    for d in adapter_dirs:
        if not (Path(d) / "adapter_config.json").is_file():
            raise BadInput("not a PEFT adapter directory (no adapter_config.json)", uri=str(d))
    quantized = _is_quantized(model)
    if merge is None:
        merge = not quantized
    if merge:
        for d in adapter_dirs:
            model = PeftModel.from_pretrained(model, str(d), is_trainable=False).merge_and_unload()
        return model
    names = [f"adapter_{i}" for i in range(len(adapter_dirs))]
    peft_model = PeftModel.from_pretrained(model, str(adapter_dirs[0]), adapter_name=names[0], is_trainable=False)
    for name, d in zip(names[1:], adapter_dirs[1:], strict=True):
        peft_model.load_adapter(str(d), adapter_name=name, is_trainable=False)
    peft_model.base_model.set_adapter(names)
    return peft_model


def trainable_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total
