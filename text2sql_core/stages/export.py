"""The ``export`` stage: the run's final policy, servable without this project (see ``text2sql_core.export``).

Reads the step named by ``model_from`` (the final RL step) and its lineage, and publishes at the top of
its output the merged Hugging Face model, ``generation_config.json``, the ``README.md`` model card and,
on a published base, ``adapter/``: one PEFT LoRA adapter equal to all of the run's adapters. The card's
scores come from the evaluate steps of the run, which the step lists among its inputs so that they are
published first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import BadInput
from .base import Stage, StageConfigBase, StageContext

__all__ = ["STAGE", "ExportConfig", "run"]


class ExportConfig(StageConfigBase):
    """Export settings: none yet; decoding settings in the card come from ``stages.predict``."""


def _example(prepared: Path) -> dict[str, str] | None:
    path = prepared / "dev_flat.jsonl"
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as fh:
        first = json.loads(fh.readline())
    return {"prompt": first["prompt"], "output": first["output"]}


def run(ctx: StageContext) -> dict[str, Any]:
    from ..export import export_policy
    from ..export.run import STORE_SCHEME, card_info
    from ..models.loading import BaseRef, DirRef, _download_store_model, fetch_step_dir, read_model_ref

    source = ctx.step.model_from
    if source is None:
        raise BadInput(f"step {ctx.step.name!r} names no model_from step to export", stage=ctx.step.name)
    ref = read_model_ref(ctx.input(source))
    public_base: Path | None = None
    if ref.base.source == "local":
        public_base, label = Path(str(ref.base.path)), str(ref.base.path)
    elif ref.base.source == "store":
        name = str(ref.base.key).split("/", 1)[-1]
        public_base = _download_store_model(ctx.store, str(ref.base.key), ctx.workdir / "base_model" / name)
        label = f"{STORE_SCHEME}{ref.base.key}"
        local = BaseRef(source="local", path=str(public_base))
        ref = ref.model_copy(update={"base": local, "tokenizer": ref.tokenizer if isinstance(ref.tokenizer, DirRef)
                                     else local})
    else:
        label = f"runs/{ctx.run_id}/{ref.base.step}/{ref.base.dir} (trained from scratch in this run)"

    def resolve(r: DirRef) -> Path:
        return fetch_step_dir(ctx, r)

    digest_dir = public_base if public_base is not None else resolve(ref.base.as_dir_ref())
    prepared = ctx.input("prepare") if "prepare" in ctx.step.inputs else None
    info = card_info(ctx.run_config, ctx.store, source, ref, label, digest_dir,
                     _example(prepared) if prepared is not None else None)
    staging = ctx.workdir / "export"
    if staging.exists():
        shutil.rmtree(staging)
    metrics = export_policy(ref, resolve, staging, info=info, base_dir=public_base)
    for entry in staging.iterdir():  # the export is the step's output, at its top
        shutil.move(str(entry), str(ctx.output_dir / entry.name))
    ctx.log.info("policy exported", source=source, adapter_rank=metrics["adapter_rank"])
    return {**metrics, "exported_step": source}


STAGE = Stage(name="export", config_cls=ExportConfig, run=run,
              description="The final policy as a merged HF model, one LoRA adapter and a model card.")
