"""Scaling on one CPU machine: sft on 1 vs 2 gloo ranks, and predict with the shared-prefix KV cache.

Prints (and with ``--out`` writes) one JSON document:

- ``sft``: tokens/s of the sft stage on 1 rank and on 2 ranks under ``t2s torchrun`` (one torch
  thread per rank, the same global batch), the scaling efficiency (``tps_2 / (2 tps_1)``), and the
  share of a 2-rank step spent in communication: the time of one gradient all-reduce of the model's
  parameters on 2 gloo ranks (measured in its own launch) over the 2-rank step time;
- ``predict``: dev questions/s of greedy generation with the prompt prefix the rows of a batch share
  run once (``share_prefix``, the default: batches of one prefix, its KV cache computed once)
  against the previous generation (length-sorted batches, every row recomputing the prefix),
  interleaved rounds on the same model and prompts, and whether the outputs are identical. The
  briefly trained model runs to its token budget, so the budget is set to what a trained tiny policy
  writes (the demo SQL's mean, about 35 tokens with eos).

The model is the demo's tiny Llama (``examples/demo.yaml``'s shape), trained for ``--steps`` sft
steps on the small demo data; nothing is downloaded.

    python benchmarks/scaling.py --out benchmarks/results/scaling_cpu_2core.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import yaml

TINY = {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "intermediate_size": 256, "vocab_size": 4000,
        "max_positions": 1024, "seed": 0}


def _config(root: Path, data: Path, store: Path, steps: int, batch: int) -> dict[str, Any]:
    return {
        "run_id": "scaling", "seed": 0, "workdir": str(root / "work"),
        "store": {"kind": "local", "local": {"path": str(store)}},
        "data": {"train": str(data / "train.json"), "dev": str(data / "dev.json"),
                 "tables": str(data / "tables.json"), "db_dir": str(data / "database")},
        "model": {"path": "tiny", "tiny": TINY},
        "stages": {"sft": {"max_steps": steps, "batch_size": batch, "save_steps": 10 * steps,
                           "logging_steps": max(1, steps // 4), "num_threads": 1}},
    }


def _t2s(*args: str, env: dict[str, str] | None = None) -> None:
    r = subprocess.run([sys.executable, "-m", "text2sql_core.cli", *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, check=False)
    if r.returncode != 0:
        raise SystemExit(f"t2s {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")


def _sft_metrics(store: Path) -> dict[str, Any]:
    return json.loads((store / "runs" / "scaling" / "sft" / "_manifest.json").read_text())["metrics"]


_ALLREDUCE = textwrap.dedent('''
    import json, sys, time, torch
    from text2sql_core import distributed
    w = distributed.init()
    params = [torch.nn.Parameter(torch.zeros(int(sys.argv[1])))]
    times = []
    for i in range(int(sys.argv[2])):
        params[0].grad = torch.randn_like(params[0])
        distributed.barrier()
        t0 = time.perf_counter()
        distributed.all_reduce_gradients(params)
        times.append(time.perf_counter() - t0)
    if w.is_main:
        json.dump(times, open(sys.argv[3], "w"))
''')


def sft_scaling(work: Path, data: Path, steps: int, batch: int) -> dict[str, Any]:
    import shutil

    base = work / "base-store"
    cfg = _config(work / "base", data, base, steps, batch)
    (work / "base.yaml").write_text(yaml.safe_dump(cfg))
    _t2s("stage", "run", "prepare", "--config", str(work / "base.yaml"))
    out: dict[str, Any] = {"global_batch": batch, "steps": steps, "threads_per_rank": 1}
    for ranks in (1, 2):
        store = work / f"store-{ranks}"
        shutil.copytree(base / "runs" / "scaling" / "prepare", store / "runs" / "scaling" / "prepare")
        path = work / f"ranks-{ranks}.yaml"
        path.write_text(yaml.safe_dump(_config(work / f"r{ranks}", data, store, steps, batch)))
        if ranks == 1:
            _t2s("stage", "run", "sft", "--config", str(path))
        else:
            _t2s("torchrun", "--standalone", f"--nproc-per-node={ranks}", "--", "stage", "run", "sft",
                 "--config", str(path))
        m = _sft_metrics(store)
        out[f"ranks_{ranks}"] = {"tokens_per_s": m["tokens_per_s"], "train_seconds": m["train_seconds"],
                                 "step_seconds": round(m["train_seconds"] / steps, 4), "final_loss": m["final_loss"]}
    tps1, tps2 = out["ranks_1"]["tokens_per_s"], out["ranks_2"]["tokens_per_s"]
    out["speedup"] = round(tps2 / tps1, 3)
    out["scaling_efficiency"] = round(tps2 / (2 * tps1), 3)
    params = _sft_metrics(work / "store-1")["trainable_params"]
    script, result = work / "allreduce.py", work / "allreduce.json"
    script.write_text(_ALLREDUCE)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        str(script), str(params), "30", str(result)], capture_output=True, text=True, check=False,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode != 0:
        raise SystemExit(f"all-reduce benchmark failed:\n{r.stderr[-3000:]}")
    allreduce_s = statistics.median(json.loads(result.read_text())[5:])
    out["allreduce_seconds"] = round(allreduce_s, 5)
    out["communication_share"] = round(allreduce_s / out["ranks_2"]["step_seconds"], 4)
    out["model_params"] = params
    return out


def predict_sharing(work: Path, rounds: int, batch_size: int, max_new_tokens: int) -> dict[str, Any]:
    import torch

    from text2sql_core.models.generation import generate
    from text2sql_core.models.loading import load_tokenizer
    from text2sql_core.stages.predict import read_dev_prompts

    torch.set_num_threads(1)
    model_dir = work / "store-1" / "runs" / "scaling" / "sft" / "model"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    tokenizer = load_tokenizer(model_dir)
    prompts = [q[2] for q in read_dev_prompts(work / "store-1" / "runs" / "scaling" / "prepare")]
    times: dict[bool, list[float]] = {True: [], False: []}
    outputs: dict[bool, list[Any]] = {}
    for _ in range(rounds):
        for share in (False, True):  # interleaved: the machine's load hits both alike
            t0 = time.perf_counter()
            outputs[share] = generate(model, tokenizer, prompts, batch_size=batch_size,
                                      max_new_tokens=max_new_tokens, share_prefix=share)
            times[share].append(time.perf_counter() - t0)
    plain, shared = statistics.median(times[False]), statistics.median(times[True])
    return {
        "questions": len(prompts), "batch_size": batch_size, "max_new_tokens": max_new_tokens, "rounds": rounds,
        "mean_new_tokens": round(statistics.mean(len(g.token_ids) for g in outputs[True]), 1),
        "questions_per_s_recomputed_prefix": round(len(prompts) / plain, 2),
        "questions_per_s_shared_prefix": round(len(prompts) / shared, 2),
        "speedup": round(plain / shared, 3),
        "identical_outputs": [(g.raw, g.token_ids) for g in outputs[True]]
                             == [(g.raw, g.token_ids) for g in outputs[False]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="sft steps per run (the predict model too)")
    parser.add_argument("--batch", type=int, default=16, help="global sft batch size")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved predict rounds per setting")
    parser.add_argument("--predict-batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=36)
    parser.add_argument("--skip-predict", action="store_true", help="measure sft scaling only")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    from text2sql_core.data.demo import write_demo

    with tempfile.TemporaryDirectory(prefix="t2s-scaling-") as tmp:
        work = Path(tmp)
        write_demo(work / "data", seed=0, size="small")
        doc = {
            "machine": {"cpus": os.cpu_count(), "load_average_1m_at_start": round(os.getloadavg()[0], 2)},
            "sft": sft_scaling(work, work / "data", args.steps, args.batch),
        }
        if not args.skip_predict:
            doc["predict"] = predict_sharing(work, args.rounds, args.predict_batch, args.max_new_tokens)
        doc["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    text = json.dumps(doc, indent=2) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
