"""``t2s export``: a trained step's policy as a merged Hugging Face model, one LoRA adapter and a model card."""

from __future__ import annotations

import argparse

from ..errors import EXIT_OK
from ._flags import flag_names


def _run(args: argparse.Namespace) -> int:
    from ..config import load_run_config
    from ..export.run import export_step

    cfg = load_run_config(args.config)
    if args.run_id:
        cfg = cfg.model_copy(update={"run_id": args.run_id})
    with flag_names({"step": "--step", "out": "--out"}):
        where, metrics = export_step(cfg, args.step, args.out)
    adapter = f", adapter/ of rank {metrics['adapter_rank']}" if metrics["adapter_rank"] else " (full model, no adapter)"
    print(f"exported {args.step} of run {cfg.run_id} to {where}: merged model{adapter}, README.md model card")
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a trained step's policy: merged HF model, LoRA adapter, model card",
        description="Write a trained step's policy where serving stacks can take it: a merged Hugging Face "
                    "model (safetensors, config, tokenizer, generation_config.json), one PEFT LoRA adapter equal "
                    "to all of the run's adapters together (adapter/, when the base is a published model) and a "
                    "README.md model card (base and digest, recipe, data, EX/EM, prompt format, vLLM flags).")
    p.add_argument("--config", help="run config YAML (its `store` says where the run's artifacts are)")
    p.add_argument("--run-id", help="override the config's run_id")
    p.add_argument("--step", required=True, help="the trained step to export (sft or the RL step)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="a new local directory (written atomically), or store://<prefix> in the run's store")
    p.set_defaults(func=_run)
