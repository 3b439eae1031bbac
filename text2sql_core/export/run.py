"""Export a published step of a run (``t2s export``, the ``export`` step): lineage from the store, card from the run.

Everything comes from published artifacts: the step's ``model_ref.json`` and the directories it names
(fetched and verified against their manifests), the base (a local directory or ``store://models/...``),
the scores of the evaluate steps that scored this policy and the SFT one, and one worked example from
the prepared dev split.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import BadInput
from . import CardInfo, directory_digest, export_policy

__all__ = ["STORE_SCHEME", "card_info", "export_step"]

STORE_SCHEME = "store://"
_LEVELS = ("easy", "medium", "hard", "extra")


def _scores(metrics: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    out = {}
    for level in (*_LEVELS, "all"):
        suffix = "" if level == "all" else f"_{level}"
        ex, em = metrics.get(f"ex{suffix}"), metrics.get(f"em{suffix}")
        if ex is not None or em is not None:
            out[level] = {"ex": ex, "em": em}
    return out


def card_info(run_config: Any, store: Any, step: str, ref: Any, base_label: str, base_dir: Path,
              example: dict[str, str] | None) -> CardInfo:
    """The card's facts: recipe of every step in ``step``'s lineage, data, scores, prompt example."""
    from ..graph import steps_for
    from ..stages.base import step_prefix
    from ..store.manifest import read_manifest

    graph = steps_for(run_config)
    by_name = {s.name: s for s in graph}
    lineage = [a.step for a in ref.adapters] or [step]
    if ref.base.source == "step" and ref.base.step not in lineage:
        lineage.insert(0, ref.base.step)
    recipe: dict[str, Any] = {"model": run_config.model.model_dump(mode="json")}
    for name in lineage:
        kind = by_name[name].kind if name in by_name else name
        stage_cfg = getattr(run_config.stages, kind, None)  # the RL step's kind is the algorithm
        if stage_cfg is not None:
            recipe[name] = stage_cfg.model_dump(mode="json")
    scores: dict[str, dict[str, dict[str, float | None]]] = {}
    for s in graph:  # evaluate steps whose predict step decoded a policy of this lineage
        if s.kind != "evaluate":
            continue
        predict = next((by_name[i] for i in s.inputs if i in by_name and by_name[i].kind == "predict"), None)
        if predict is None or predict.model_from not in (*lineage, step):
            continue
        m = read_manifest(store, step_prefix(run_config.run_id, s.name))
        if m is not None:
            source = by_name[predict.model_from]
            label = "SFT" if source.kind == "sft" else f"RL ({source.kind})"
            scores[label] = _scores(m.metrics)
    predict_cfg = getattr(run_config.stages, "predict", None)
    return CardInfo(run_id=run_config.run_id, step=step, base=base_label, base_digest=directory_digest(base_dir),
                    recipe=recipe, data=run_config.data.model_dump(mode="json"), scores=scores, example=example,
                    max_new_tokens=predict_cfg.max_new_tokens if predict_cfg is not None else 128)


def _first_example(store: Any, run_id: str, tmp: Path) -> dict[str, str] | None:
    """The first prepared dev prompt and its gold SQL, for the card."""
    from ..store.manifest import fetch, read_manifest

    prefix = f"runs/{run_id}/prepare"
    manifest = read_manifest(store, prefix)
    if manifest is None or "dev_flat.jsonl" not in {f.path for f in manifest.files}:
        return None
    one = manifest.model_copy(update={"files": [f for f in manifest.files if f.path == "dev_flat.jsonl"]})
    fetch(store, prefix, tmp / "prepare", manifest=one)
    with (tmp / "prepare" / "dev_flat.jsonl").open(encoding="utf-8") as fh:
        first = json.loads(fh.readline())
    return {"prompt": first["prompt"], "output": first["output"]}


def export_step(run_config: Any, step: str, out: str) -> tuple[str, dict[str, Any]]:
    """Export ``step``'s policy to ``out`` (a local directory or ``store://<prefix>``); returns (where, metrics)."""
    from ..models.loading import BaseRef, DirRef, _download_store_model, read_model_ref
    from ..stages.base import step_prefix
    from ..store import open_store
    from ..store.manifest import fetch, publish, read_manifest

    store = open_store(run_config.store)
    run_id = run_config.run_id
    if read_manifest(store, step_prefix(run_id, step)) is None:
        raise BadInput(f"step {step!r} of run {run_id!r} is not published in {store.uri}", field="--step")
    with tempfile.TemporaryDirectory(prefix="t2s-export-") as tmp_name:
        tmp = Path(tmp_name)

        def resolve(ref: DirRef) -> Path:
            prefix = step_prefix(run_id, ref.step)
            manifest = read_manifest(store, prefix)
            if manifest is None:
                raise BadInput(f"the model lineage names step {ref.step!r}, which is not published", uri=store.uri)
            wanted = [f for f in manifest.files if f.path.startswith(ref.dir.rstrip("/") + "/")
                      or f.path == ref.dir]
            local = tmp / "lineage" / ref.step
            if wanted:
                fetch(store, prefix, local, manifest=manifest.model_copy(update={"files": wanted}))
            if not (local / ref.dir).exists():
                raise BadInput(f"step {ref.step!r} published no {ref.dir}", uri=store.uri)
            return local / ref.dir

        ref = read_model_ref(resolve(DirRef(step=step, dir="model_ref.json")).parent)
        public_base: Path | None = None
        if ref.base.source == "local":
            public_base = Path(str(ref.base.path))
            base_label = str(ref.base.path)
        elif ref.base.source == "store":
            public_base = _download_store_model(store, str(ref.base.key), tmp / "base")
            base_label = f"{STORE_SCHEME}{ref.base.key}"
            local = BaseRef(source="local", path=str(public_base))  # downloaded once, loaded from here
            ref = ref.model_copy(update={"base": local, "tokenizer": ref.tokenizer if isinstance(ref.tokenizer, DirRef)
                                         else local})
        else:
            base_label = f"runs/{run_id}/{ref.base.step}/{ref.base.dir} (trained from scratch in this run)"
        digest_dir = public_base if public_base is not None else resolve(ref.base.as_dir_ref())
        info = card_info(run_config, store, step, ref, base_label, digest_dir, _first_example(store, run_id, tmp))
        kw = {"info": info, "base_dir": public_base}
        if out.startswith(STORE_SCHEME):
            key = out.removeprefix(STORE_SCHEME).strip("/")
            if not key:
                raise BadInput("store:// needs a prefix, e.g. store://exports/my-model", field="--out")
            metrics = export_policy(ref, resolve, tmp / "export", **kw)
            publish(store, key, tmp / "export", run_id=run_id, step="export", kind="export", config_hash="",
                    metrics=metrics, started_at=datetime.now(UTC))
            return store.uri_for(key) if hasattr(store, "uri_for") else out, metrics
        return out, export_policy(ref, resolve, Path(out), **kw)
