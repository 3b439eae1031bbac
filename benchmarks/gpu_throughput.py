"""GPU throughput of the training stages on random-init Llama-shaped models; prints one JSON document.

Measures, on one GPU (about 6 minutes on an H100; nothing is downloaded, weights are random):

- ``sft_1b``: full fine-tuning of a TinyLlama-1.1B-shaped model (bf16 weights and AdamW states),
  completion-only loss on the last quarter of each sequence: tokens/s and MFU;
- ``sft_7b_lora``: a Llama-2-7B-shaped model, bf16, LoRA r=64 on q/v, gradient checkpointing:
  tokens/s and MFU;
- ``ppo_1b``: one PPO step of a LoRA policy on the 1B shape, split into *generation* (sampling
  responses with the KV cache), *scoring* (reward model, reference log-probs with the adapter off,
  values) and *training* (clipped policy + value losses, ``ppo_epochs`` passes); seconds per phase.

MFU counts model FLOPs only: ``6 N`` per token for full fine-tuning, ``4 N`` with a frozen base
(forward + input gradients, no weight gradients), plus causal attention; recomputation under
gradient checkpointing is not counted, so MFU stays comparable across settings. The baseline is the
GPU's dense bf16 peak (H100/H200 SXM 989 TFLOP/s; ``--peak-tflops`` overrides).

    python benchmarks/gpu_throughput.py                    # the full run, on cuda
    python benchmarks/gpu_throughput.py --device cpu --tiny  # seconds-long smoke run (CI)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
                    "A10": 125.0, "L4": 121.0}


@dataclass(frozen=True)
class Shape:
    """A Llama configuration: the published shape of a known model, or a tiny one for smoke runs."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int = 32000

    def config(self, max_positions: int):
        from transformers import LlamaConfig

        return LlamaConfig(vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.intermediate,
                           num_hidden_layers=self.layers, num_attention_heads=self.heads,
                           num_key_value_heads=self.kv_heads, max_position_embeddings=max_positions,
                           tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)


SHAPES = {
    "1b": Shape("tinyllama-1.1b", 2048, 5632, 22, 32, 4),
    "7b": Shape("llama-2-7b", 4096, 11008, 32, 32, 32),
    "tiny": Shape("tiny", 64, 128, 2, 4, 4, vocab=512),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def _build(shape: Shape, seq_len: int, device: torch.device, dtype: torch.dtype, seed: int = 0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    with torch.device(device), _default_dtype(dtype):  # built in place: a 7B model never exists in fp32
        model = LlamaForCausalLM(shape.config(seq_len + 256))
    return model


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _params(model: Any, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _attn_flops_per_token(shape: Shape, seq_len: int, backward_factor: float) -> float:
    # QK^T and AV: 2 * 2 * seq * hidden per layer forward, half of it for causal masking
    return backward_factor * 2 * shape.layers * seq_len * shape.hidden


def _completion_batch(batch: int, seq_len: int, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, vocab, (batch, seq_len), device=device)
    labels = ids.clone()
    labels[:, : seq_len * 3 // 4] = -100  # prompt tokens masked: completion-only loss
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def bench_sft(shape: Shape, *, device: torch.device, dtype: torch.dtype, batch: int, seq_len: int, steps: int,
              warmup: int, lora: bool, grad_ckpt: bool, peak: float | None) -> dict[str, Any]:
    """Optimiser steps per second of SFT on random tokens; one forward/backward per step."""
    model = _build(shape, seq_len, device, dtype)
    total_params = _params(model)
    if grad_ckpt:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if lora:
        from peft import LoraConfig, get_peft_model

        if grad_ckpt:
            model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=64, lora_alpha=32, lora_dropout=0.05,
                                                 target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5, fused=device.type == "cuda")
    data = _completion_batch(batch, seq_len, shape.vocab, device)
    for _ in range(warmup):
        model(**data).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(steps):
        loss = model(**data).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    seconds = time.perf_counter() - started
    tokens = batch * seq_len * steps
    per_token = (4 if lora else 6) * total_params + _attn_flops_per_token(shape, seq_len, 3)
    result = {
        "shape": shape.name, "params": total_params, "trainable_params": sum(p.numel() for p in trainable),
        "lora": lora, "gradient_checkpointing": grad_ckpt, "dtype": str(dtype).removeprefix("torch."),
        "batch": batch, "seq_len": seq_len, "steps": steps, "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1), "final_loss": round(float(loss), 4),
        "model_tflops_per_s": round(per_token * tokens / seconds / 1e12, 3),
        "mfu": round(per_token * tokens / seconds / peak, 4) if peak else None,
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def bench_ppo(shape: Shape, *, device: torch.device, dtype: torch.dtype, batch: int, prompt_len: int,
              new_tokens: int, ppo_epochs: int, steps: int) -> dict[str, Any]:
    """Seconds per PPO step, split into generation, scoring and training (medians over ``steps``)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForSequenceClassification

    from text2sql_core.rl.losses import (
        compute_gae,
        logprobs_from_logits,
        policy_loss,
        token_rewards,
        value_loss,
    )

    seq = prompt_len + new_tokens
    policy = get_peft_model(_build(shape, seq, device, dtype),
                            LoraConfig(r=64, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                       task_type="CAUSAL_LM"))
    torch.manual_seed(1)
    rm_config = shape.config(seq + 256)
    rm_config.num_labels = 1
    with torch.device(device), _default_dtype(dtype):
        reward_model = LlamaForSequenceClassification(rm_config)
    reward_model.eval()
    value_head = torch.nn.Linear(shape.hidden, 1, device=device, dtype=dtype)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters()),
                            lr=1e-5)
    phases: dict[str, list[float]] = {"generation": [], "scoring": [], "training": []}
    for step in range(steps + 1):  # the first step is warm-up
        prompts = torch.randint(3, shape.vocab, (batch, prompt_len), device=device)
        _sync(device)
        t0 = time.perf_counter()
        policy.eval()
        with torch.no_grad():
            out = policy.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                                  max_new_tokens=new_tokens, min_new_tokens=new_tokens, top_k=0, top_p=1.0,
                                  pad_token_id=0, eos_token_id=None)
        _sync(device)
        t1 = time.perf_counter()
        full = out
        mask = torch.zeros_like(full, dtype=torch.float32)
        mask[:, prompt_len:] = 1.0
        labels = full[:, 1:]
        act = mask[:, 1:]
        with torch.no_grad():
            pol = policy(input_ids=full, output_hidden_states=True)
            old_logprobs = logprobs_from_logits(pol.logits[:, :-1], labels)
            old_values = value_head(pol.hidden_states[-1][:, :-1]).squeeze(-1).float()
            with policy.disable_adapter():
                ref_logprobs = logprobs_from_logits(policy(input_ids=full).logits[:, :-1], labels)
            scores = reward_model(input_ids=full).logits.squeeze(-1).float()
            rewards, _kl = token_rewards(scores, old_logprobs, ref_logprobs, act, kl_coef=0.1)
            advantages, returns = compute_gae(old_values, rewards, act, gamma=1.0, lam=0.95)
        _sync(device)
        t2 = time.perf_counter()
        policy.train()
        for _ in range(ppo_epochs):
            cur = policy(input_ids=full, output_hidden_states=True)
            logprobs = logprobs_from_logits(cur.logits[:, :-1], labels)
            values = value_head(cur.hidden_states[-1][:, :-1]).squeeze(-1).float()
            loss = (policy_loss(logprobs, old_logprobs, advantages, act, 0.2).loss
                    + 0.5 * value_loss(values, old_values, returns, act, 0.2).loss)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        _sync(device)
        t3 = time.perf_counter()
        if step > 0:
            phases["generation"].append(t1 - t0)
            phases["scoring"].append(t2 - t1)
            phases["training"].append(t3 - t2)
    med = {k: sorted(v)[len(v) // 2] for k, v in phases.items()}
    total = sum(med.values())
    result = {"shape": shape.name, "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
              "ppo_epochs": ppo_epochs, "steps": steps, "step_seconds": round(total, 3),
              **{f"{k}_seconds": round(v, 3) for k, v in med.items()},
              **{f"{k}_share": round(v / total, 3) for k, v in med.items()},
              "generated_tokens_per_s": round(batch * new_tokens / med["generation"], 1)}
    del policy, reward_model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


@dataclass
class Plan:
    sft_1b: dict[str, Any]
    sft_7b_lora: dict[str, Any]
    ppo_1b: dict[str, Any]


def _plan(tiny: bool) -> Plan:
    if tiny:
        return Plan(sft_1b={"shape": "tiny", "batch": 2, "seq_len": 64, "steps": 2, "warmup": 1},
                    sft_7b_lora={"shape": "tiny", "batch": 2, "seq_len": 64, "steps": 2, "warmup": 1},
                    ppo_1b={"shape": "tiny", "batch": 2, "prompt_len": 32, "new_tokens": 8, "ppo_epochs": 1,
                            "steps": 1})
    return Plan(sft_1b={"shape": "1b", "batch": 8, "seq_len": 1024, "steps": 20, "warmup": 3},
                sft_7b_lora={"shape": "7b", "batch": 4, "seq_len": 1024, "steps": 10, "warmup": 2},
                ppo_1b={"shape": "1b", "batch": 32, "prompt_len": 512, "new_tokens": 128, "ppo_epochs": 2,
                        "steps": 3})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda when available)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and a few steps: a smoke run for CI")
    parser.add_argument("--only", choices=["sft_1b", "sft_7b_lora", "ppo_1b"], action="append",
                        help="run only these measurements (repeatable)")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device, for MFU")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default=None,
                        help="weights dtype (default: bf16 on cuda, fp32 on cpu)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is visible (use --device cpu --tiny for a smoke run)",
              file=sys.stderr)
        return 2
    if device.type == "cpu" and not args.tiny:
        print("error: the full shapes need a GPU; use --device cpu --tiny on a CPU", file=sys.stderr)
        return 2
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    torch.manual_seed(0)
    peak = _peak_flops(device, args.peak_tflops)
    plan = asdict(_plan(args.tiny))
    wanted = args.only or list(plan)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."),
        "peak_tflops": peak / 1e12 if peak else None, "tiny": args.tiny,
    }
    started = time.perf_counter()
    for name in wanted:
        spec = dict(plan[name])
        shape = SHAPES[spec.pop("shape")]
        print(f"[gpu_throughput] {name} on {shape.name} ...", file=sys.stderr, flush=True)
        if name == "ppo_1b":
            report[name] = bench_ppo(shape, device=device, dtype=dtype, **spec)
        else:
            report[name] = bench_sft(shape, device=device, dtype=dtype, lora=name.endswith("lora"),
                                     grad_ckpt=name.endswith("lora"), peak=peak, **spec)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
