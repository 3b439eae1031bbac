"""CPU cost of one SFT step of the tiny model on the demo data: the sft stage's batching vs the usual one.

Three ways to compute the same completion-only loss and its gradients on the same batches:

- ``baseline``: right-padded rows, logits for every position, Hugging Face's own loss with the
  prompt masked (what TRL's ``SFTTrainer`` does with a prompt/completion dataset);
- ``completion_logits``: left-padded rows, the LM head on the completion positions only;
- ``shared_prefix``: the sft stage's default: rows of one database, their shared instruction +
  schema prefix run once and its cache repeated over the rows.

    python benchmarks/sft_step_speed.py [--steps 8] [--batch-size 32] [--threads 2]

Prints ms per step (median), tokens per step and the speedup over the baseline. All three give
the same loss (checked on the first batch).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from text2sql_core.data.dataset import DatabaseDir, prepare_split
from text2sql_core.data.demo import write_demo
from text2sql_core.data.formats import read_examples, read_tables
from text2sql_core.models.batching import (
    IGNORE_INDEX,
    PlannedBatch,
    collate,
    completion_loss,
    encode_example,
    plan_batches,
)
from text2sql_core.models.config import TinyModelConfig
from text2sql_core.models.tiny import build_tiny_model
from text2sql_core.models.tokenizer import train_tokenizer


def _baseline_loss(model, batch: PlannedBatch, pad: int) -> torch.Tensor:
    rows = batch.examples
    width = max(len(e.input_ids) for e in rows)
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, e in enumerate(rows):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[i, : len(e.input_ids)] = 1
        labels[i, e.prompt_len: len(e.input_ids)] = torch.tensor(e.input_ids[e.prompt_len:])
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per method (after one warm-up step)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(tmp) / "demo"
        write_demo(demo, seed=0)
        schemas = read_tables(demo / "tables.json")
        split = prepare_split(read_examples("spider", demo / "train.json"), schemas, fmt="spider",
                              dataset=str(demo), tables_path=str(demo / "tables.json"),
                              databases=DatabaseDir(demo / "database"))
    flats, metas = split.flats, split.metas
    tok = train_tokenizer((f["prompt"] + f["output"] for f in flats), 4000)
    cfg = TinyModelConfig()
    model = build_tiny_model(cfg, tok)
    examples = [encode_example(tok, f["prompt"], f["output"], max_source_length=1024, max_target_length=256)
                for f in flats]
    plan = plan_batches(examples, batch_size=args.batch_size, num_batches=args.steps + 1, seed=0,
                        groups=[m["db_id"] for m in metas])
    pad = tok.pad_token_id
    methods = {
        "baseline": lambda b: _baseline_loss(model, b, pad),
        "completion_logits": lambda b: completion_loss(model, collate(PlannedBatch(b.examples, 0), pad)),
        "shared_prefix": lambda b: completion_loss(model, collate(b, pad)),
    }
    with torch.no_grad():
        losses = {name: float(fn(plan[0])) for name, fn in methods.items()}
    spread = max(losses.values()) - min(losses.values())
    print(f"tiny model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, vocab {len(tok)}, "
          f"batch {args.batch_size}, {args.threads} threads; first-batch losses agree within {spread:.2e}")
    results = {}
    for name, fn in methods.items():
        times = []
        for i, batch in enumerate(plan):
            t0 = time.perf_counter()
            fn(batch).backward()
            model.zero_grad(set_to_none=True)
            if i:
                times.append(time.perf_counter() - t0)
        results[name] = statistics.median(times)
    tokens = {name: sum(len(e.input_ids) for e in plan[1].examples) for name in methods}
    tokens["shared_prefix"] = tokens["baseline"] - (len(plan[1].examples) - 1) * plan[1].prefix_len
    base = results["baseline"]
    for name, sec in results.items():
        print(f"{name:18s} {sec * 1000:8.1f} ms/step  {tokens[name]:6d} tokens/step  x{base / sec:5.2f}")


if __name__ == "__main__":
    main()
