"""Decoding speed of the RL policy against the SFT policy: adapters merged (what predict runs) or not.

The RL step publishes a LoRA adapter on every linear layer on top of the SFT policy. Run unmerged,
every linear layer of every decoding step pays two extra matmuls and PEFT's Python dispatch; merged
once at load (``models.generation.merged_for_inference``) the policy is a plain model of the SFT
policy's shape. Goal: the RL policy decodes within 1.5x of the SFT policy's time.

    python benchmarks/predict_merged.py [--prompts 64] [--new-tokens 48] [--rounds 3]

The demo's tiny model shape, an r 16 adapter with non-zero B on every linear layer, greedy decoding
of a fixed number of tokens per prompt (so that every variant does the same work).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch

from text2sql_core.models.config import LoRAConfig, TinyModelConfig
from text2sql_core.models.generation import lora_layers, merged_for_inference
from text2sql_core.models.loading import load_causal_lm, load_tokenizer
from text2sql_core.models.lora import apply_lora, load_adapters
from text2sql_core.models.tiny import build_tiny

GOAL = 1.5
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    texts = [f"SELECT name FROM singer WHERE age > {i} AND country = 'c{i % 7}'" for i in range(400)]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "sft"
        build_tiny(TinyModelConfig(), texts, base)
        rl = apply_lora(load_causal_lm(base), LoRAConfig(r=16, alpha=32, dropout=0.0, target_modules=LINEAR))
        with torch.no_grad():
            for name, p in rl.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.01)
        rl.save_pretrained(str(Path(tmp) / "rl"))
        tok = load_tokenizer(base)
        variants = {
            "SFT policy": load_causal_lm(base),
            "RL policy, adapter unmerged": load_adapters(load_causal_lm(base), [Path(tmp) / "rl"], merge=False),
        }
        variants["RL policy, merged (predict)"] = merged_for_inference(
            load_adapters(load_causal_lm(base), [Path(tmp) / "rl"], merge=False))
    tok.padding_side = "left"  # a decoder-only model continues from the last position of every row
    enc = tok([f"question {i} about singers ###Response:" for i in range(args.prompts)], return_tensors="pt",
              padding=True)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, model in variants.items():
            model.eval()
            started = time.perf_counter()
            with torch.no_grad():
                model.generate(**enc, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                               do_sample=False, pad_token_id=tok.pad_token_id)
            times[name].append(time.perf_counter() - started)
    sft = statistics.median(times["SFT policy"])
    print(f"{args.prompts} prompts x {args.new_tokens} new tokens, median of {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    for name, values in times.items():
        t = statistics.median(values)
        print(f"{name:30s} {t:6.2f} s  {t / sft:5.2f}x SFT   ({lora_layers(variants[name])} LoRA layers)")
    merged = statistics.median(times["RL policy, merged (predict)"]) / sft
    print(f"goal: RL (merged) <= {GOAL}x SFT: {'met' if merged <= GOAL else 'NOT met'} ({merged:.2f}x)")


if __name__ == "__main__":
    main()
