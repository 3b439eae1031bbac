"""Export a trained policy so that it can be served without this project.

A run leaves its policy as adapters stacked on a base inside the artifact store (``sft/adapter/`` or
``sft/model/``, then the RL step's ``adapter/``), loadable only through ``load_policy_from_step``.
``export_policy`` writes what serving stacks take (vLLM, DB-GPT, plain ``transformers``)::

    OUT/
      config.json, model.safetensors, tokenizer files   the merged model: base + every adapter
      generation_config.json                           greedy, eos as predict decodes
      README.md                                        model card: base and digest, recipe, data,
                                                       scores, the exact prompt format
      adapter/                                         one PEFT LoRA adapter = all adapters together
                                                       (only on a base others can download)

**Combining adapters is exact.** Each adapter of a lineage was trained on the base with the earlier
ones merged in, so the policy's linear layer is ``W + s1 B1 A1 + s2 B2 A2`` (``s = alpha / r``).
Concatenating the factors, ``A = [A1; A2]`` and ``B = [s1 B1, s2 B2]``, with ``alpha = r = r1 + r2``
(scaling 1), gives ``B A = s1 B1 A1 + s2 B2 A2``: the same function, rank ``r1 + r2``. A module only
one adapter targets gets zero factors from the other. Adapters with ``modules_to_save``, DoRA,
rsLoRA or bias terms cannot be written as one plain LoRA and are refused.

The tiny from-scratch model has no public base: it exports as a full model, without ``adapter/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInput

__all__ = ["ADAPTER_DIR", "CardInfo", "combine_adapters", "directory_digest", "export_policy", "model_card",
           "write_generation_config"]

ADAPTER_DIR = "adapter"
_ADAPTER_WEIGHTS = "adapter_model.safetensors"
_ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class CardInfo:
    """What the model card says besides the weights: where they come from and how well they do."""

    run_id: str
    step: str
    base: str
    base_digest: str
    recipe: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    #: per policy ("SFT", "RL (ppo)"): {level: {"ex": x, "em": y}}
    scores: Mapping[str, Mapping[str, Mapping[str, float | None]]] = field(default_factory=dict)
    #: one worked example: {"prompt": ..., "output": ...} from the prepared dev split
    example: Mapping[str, str] | None = None
    max_new_tokens: int = 128


def directory_digest(folder: Path) -> str:
    """sha256 over every file's relative path and content hash: one name for a set of weights."""
    outer = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        inner = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                inner.update(chunk)
        outer.update(f"{path.relative_to(folder).as_posix()} {inner.hexdigest()}\n".encode())
    return outer.hexdigest()


def _adapter_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / _ADAPTER_CONFIG
    if not path.is_file() or not (Path(folder) / _ADAPTER_WEIGHTS).is_file():
        raise BadInput(f"not a PEFT adapter directory (needs {_ADAPTER_CONFIG} and {_ADAPTER_WEIGHTS})",
                       uri=str(folder))
    cfg = json.loads(path.read_text())
    problems = [what for what, bad in (
        ("modules_to_save", bool(cfg.get("modules_to_save"))), ("DoRA", bool(cfg.get("use_dora"))),
        ("rsLoRA", bool(cfg.get("use_rslora"))), ("bias", cfg.get("bias", "none") != "none"),
        ("per-module ranks", bool(cfg.get("rank_pattern") or cfg.get("alpha_pattern"))),
        ("a non-LoRA adapter", cfg.get("peft_type", "LORA") != "LORA")) if bad]
    if problems:
        raise BadInput(f"cannot be combined into one plain LoRA adapter: it uses {', '.join(problems)}",
                       uri=str(path))
    return cfg


def combine_adapters(adapter_dirs: Sequence[Path], out_dir: Path, *, base_name: str) -> int:
    """Write one PEFT LoRA adapter equal to ``adapter_dirs`` applied in order (see the module docstring).

    Returns its rank (the sum of theirs).
    """
    import torch
    from safetensors.torch import load_file, save_file

    if not adapter_dirs:
        raise ValueError("no adapter to combine")
    configs = [_adapter_config(d) for d in adapter_dirs]
    weights = [load_file(str(Path(d) / _ADAPTER_WEIGHTS)) for d in adapter_dirs]
    ranks = [int(c["r"]) for c in configs]
    scales = [float(c["lora_alpha"]) / int(c["r"]) for c in configs]
    total = sum(ranks)
    # module prefix -> per adapter (A, B) or None; keys read "<module>.lora_A.weight"
    modules: dict[str, list[tuple[torch.Tensor, torch.Tensor] | None]] = {}
    for k, w in enumerate(weights):
        for key in w:
            if ".lora_A." not in key:
                if ".lora_B." not in key:
                    raise BadInput(f"holds {key!r}, which is not a LoRA factor", uri=str(adapter_dirs[k]))
                continue
            module = key.split(".lora_A.")[0]
            modules.setdefault(module, [None] * len(weights))[k] = (w[key], w[key.replace(".lora_A.", ".lora_B.")])
    out: dict[str, torch.Tensor] = {}
    for module, parts in sorted(modules.items()):
        present = next(p for p in parts if p is not None)
        in_features, out_features = present[0].shape[1], present[1].shape[0]
        a_blocks, b_blocks = [], []
        for (r, s), part in zip(zip(ranks, scales, strict=True), parts, strict=True):
            if part is None:
                a_blocks.append(torch.zeros(r, in_features, dtype=present[0].dtype))
                b_blocks.append(torch.zeros(out_features, r, dtype=present[1].dtype))
            else:
                a_blocks.append(part[0])
                b_blocks.append(part[1] * s)
        out[f"{module}.lora_A.weight"] = torch.cat(a_blocks, dim=0).contiguous()
        out[f"{module}.lora_B.weight"] = torch.cat(b_blocks, dim=1).contiguous()
    targets = sorted({m.rsplit(".", 1)[-1] for m in modules})
    config = {**configs[0], "r": total, "lora_alpha": total, "target_modules": targets, "lora_dropout": 0.0,
              "modules_to_save": None, "base_model_name_or_path": base_name, "inference_mode": True}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(out, str(out_dir / _ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (out_dir / _ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return total


def write_generation_config(model: Any, tokenizer: Any, out_dir: Path, *, max_new_tokens: int) -> None:
    """Greedy decoding that stops at the tokenizer's eos, as predict decodes (see the card for the SQL cut)."""
    from transformers import GenerationConfig

    gen = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                           eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                           else tokenizer.eos_token_id,
                           bos_token_id=tokenizer.bos_token_id)
    model.generation_config = gen
    gen.save_pretrained(str(out_dir))


def _scores_table(scores: Mapping[str, Mapping[str, Mapping[str, float | None]]]) -> list[str]:
    if not scores:
        return ["Not evaluated in this run."]
    policies = list(scores)
    levels = [lv for lv in ("easy", "medium", "hard", "extra", "all")
              if any(lv in scores[p] for p in policies)]
    head = "| hardness | " + " | ".join(f"{p} EX | {p} EM" for p in policies) + " |"
    lines = [head, "| --- |" + " ---: | ---: |" * len(policies)]
    for lv in levels:
        cells = []
        for p in policies:
            row = scores[p].get(lv, {})
            cells += [("–" if row.get(k) is None else f"{row[k]:.3f}") for k in ("ex", "em")]
        lines.append(f"| {lv} | " + " | ".join(cells) + " |")
    return lines


def model_card(info: CardInfo, *, adapter_rank: int | None) -> str:
    """The export's README.md: what the weights are, how they were made, how to prompt and serve them."""
    lines = [f"# Text-to-SQL policy `{info.run_id}/{info.step}`", "",
             ("Exported by text2sql-rlhf (`t2s export`) from the artifact store of run "
             f"`{info.run_id}`, step `{info.step}`."), "",
             "## Base model", "", f"- base: `{info.base}`", f"- digest (sha256 over its files): `{info.base_digest}`",
             "", "## Recipe", ""]
    for name, settings in info.recipe.items():
        lines += [f"- **{name}**: `{json.dumps(settings, sort_keys=True)}`"]
    lines += ["", "## Data", "", f"`{json.dumps(dict(info.data), sort_keys=True)}`", "",
              "## Scores on the dev split (execution accuracy EX, exact match EM)", "",
              *_scores_table(info.scores), "", "## Prompt format", "",
              ("DB-GPT-Hub's prompt: the schema as sentences, then the question, then `###Response:`; the model "
              "continues with one SQL statement. Decode greedily (`generation_config.json`) and keep the text up "
              "to the first `;` outside string literals, or the first newline, or the end of sequence."), ""]
    if info.example:
        lines += ["One worked example (prompt, then the SQL the model was trained to answer):", "", "```text",
                  info.example["prompt"], "```", "", "```sql", info.example["output"], "```", ""]
    lines += ["## Serve it", "", "With `transformers`:", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "tok = AutoTokenizer.from_pretrained(\"OUT\")",
              "model = AutoModelForCausalLM.from_pretrained(\"OUT\")",
              "ids = tok(prompt, return_tensors=\"pt\")",
              "sql = tok.decode(model.generate(**ids)[0, ids[\"input_ids\"].shape[1]:], skip_special_tokens=True)",
              "```", "", "With vLLM, the merged model: `vllm serve OUT`."]
    if adapter_rank is not None:
        lines += ["", (f"The adapter in `adapter/` is one PEFT LoRA adapter of rank {adapter_rank} on the base "
                  f"above (every adapter of the run concatenated: exact). vLLM: "
                  f"`vllm serve {info.base} --enable-lora --max-lora-rank {_vllm_rank(adapter_rank)} "
                  f"--lora-modules text2sql=OUT/adapter` (the default `--max-lora-rank` is 16).")]
    else:
        lines += ["", ("No adapter: the base is not a published model (the tiny model is trained from scratch), "
                  "so the merged model is the export.")]
    return "\n".join(lines) + "\n"


def _vllm_rank(rank: int) -> int:
    """vLLM accepts a few fixed values for ``--max-lora-rank``; the smallest one that fits ``rank``."""
    for allowed in (1, 8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= allowed:
            return allowed
    return rank


def export_policy(ref: Any, resolve: Callable[[Any], Path], out_dir: Path, *, info: CardInfo,
                  base_dir: Path | None) -> dict[str, Any]:
    """Write the merged model, the combined adapter (when ``base_dir``, a public base, is given) and the card.

    ``ref`` is the step's ``ModelRef``; ``resolve`` maps its ``DirRef`` entries to local directories.
    ``out_dir`` must not exist: the export is written beside it and renamed into place.
    """
    import torch

    from ..models.generation import lora_layers, merged_for_inference
    from ..models.loading import load_from_ref

    if ref.quantization != "none":
        raise BadInput("a 4-bit (QLoRA) policy cannot be merged exactly: export needs model.quantization: none",
                       field="model.quantization")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise BadInput("already exists: export writes a new directory", uri=str(out_dir))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model, tokenizer = load_from_ref(ref, resolve, device=torch.device("cpu"))
        model = merged_for_inference(model)
        if lora_layers(model):
            raise BadInput("the policy still holds LoRA layers after merging", uri=str(out_dir))
        write_generation_config(model, tokenizer, tmp, max_new_tokens=info.max_new_tokens)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        rank = None
        if base_dir is not None and ref.adapters:
            rank = combine_adapters([resolve(a) for a in ref.adapters], tmp / ADAPTER_DIR, base_name=info.base)
        (tmp / "README.md").write_text(model_card(info, adapter_rank=rank))
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"adapter_rank": rank or 0, "parameters": sum(p.numel() for p in model.parameters()),
            "exported_files": sum(1 for p in out_dir.rglob("*") if p.is_file())}
