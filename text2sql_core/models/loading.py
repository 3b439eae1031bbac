"""Loading causal LMs: a base from a local directory or the artifact store, and a trained policy from a step.

**Bases.** ``model.path`` is a local Hugging Face model directory or ``store://models/<name>`` (weights
a user uploaded once; downloaded to the step's work directory and verified against
``models/<name>/_manifest.json`` when the upload wrote one). ``tiny`` is built, not loaded
(:mod:`.tiny`). dtype ``fp32``/``bf16``/``fp16``; ``quantization: 4bit`` loads NF4 weights for QLoRA
and needs bitsandbytes and a CUDA GPU (:func:`.lora.require_4bit_support` says which is missing).

**Model lineage: ``model_ref.json``.** Every step that publishes a model (``sft``, ``ppo``) writes
``model_ref.json`` at the top of its output, saying how to rebuild the policy::

    {
      "format": 1,
      "step": "ppo",                                      # the step that wrote this file
      "base": {"source": "store", "key": "models/llama-7b", "digest": "<sha256>"},
              # or {"source": "local", "path": "/models/llama"}
              # or {"source": "step", "step": "sft", "dir": "model"}   (full weights a step published)
      "adapters": [{"step": "sft", "dir": "adapter"},     # PEFT LoRA adapters, applied in this order;
                   {"step": "ppo", "dir": "adapter"}],    # each was trained on the base with the earlier
                                                          # ones merged in
      "merged": false,      # true: this step also published merged/ = base + all adapters merged
      "tokenizer": {"step": "sft", "dir": "adapter"},     # where the tokenizer files are
      "dtype": "bf16", "quantization": "none", "trust_remote_code": false
    }

``base.digest`` is the content digest of the base the adapters were trained on (the manifest digest of
``models/<name>``, or names/sizes/mtimes of a local directory); loading onto a base whose digest
differs is ``BadInput`` naming both. Store downloads are cached under ``<cache>/<digest>``.

``dir`` values are directories relative to that step's published output in the same run
(``runs/<run>/<step>/<dir>/``). A from-scratch ``tiny`` SFT publishes full weights in ``model/``
(``base: {"source": "step", "step": "sft", "dir": "model"}``, no adapters); a full-weight PPO does the
same with its own step name. A LoRA PPO builds its ref with :meth:`ModelRef.with_adapter`, a
full-weight one with :meth:`ModelRef.full_model`.

:func:`load_policy_from_step` is what ``predict``, ``rm_data``, ``rm`` and ``ppo`` call: it reads the
step's ``model_ref.json``, fetches every directory it names (from ``ctx.input`` for upstream steps,
else from the store, verified against that step's manifest), loads the base, merges the adapters
and returns ``(model, tokenizer)`` in eval mode.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import BadInput
from .config import STORE_MODEL_PREFIX, ModelConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..stages.base import StageContext
    from ..store import ArtifactStore

__all__ = [
    "MODEL_REF_FILE",
    "BaseRef",
    "DirRef",
    "ModelRef",
    "base_digest",
    "base_ref_for",
    "default_device",
    "downloaded_digest",
    "fetch_step_dir",
    "load_causal_lm",
    "load_from_ref",
    "load_policy_from_step",
    "load_tokenizer",
    "local_base_digest",
    "read_model_ref",
    "resolve_base_dir",
    "store_base_digest",
    "torch_dtype",
    "write_model_ref",
]

MODEL_REF_FILE = "model_ref.json"


class DirRef(BaseModel):
    """A directory inside a step's published output, in the same run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: str = Field(..., description="Step that published the directory.")
    dir: str = Field(..., description="Directory relative to that step's output (`model`, `adapter`).")


class BaseRef(BaseModel):
    """Where the base weights come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["step", "store", "local"]
    step: str | None = Field(None, description="source=step: the step that published full weights.")
    dir: str | None = Field(None, description="source=step: their directory in that step's output.")
    key: str | None = Field(None, description="source=store: the store prefix, `models/<name>`.")
    path: str | None = Field(None, description="source=local: a local Hugging Face model directory.")
    digest: str | None = Field(None, description="source=store/local: content digest of the base the "
                                                 "adapters were trained on (checked when loading).")

    def as_dir_ref(self) -> DirRef:
        assert self.source == "step" and self.step and self.dir
        return DirRef(step=self.step, dir=self.dir)


class ModelRef(BaseModel):
    """The lineage of a published policy (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = 1
    step: str
    base: BaseRef
    adapters: list[DirRef] = Field(default_factory=list)
    merged: bool = False
    tokenizer: DirRef | BaseRef
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    quantization: Literal["none", "4bit"] = "none"
    trust_remote_code: bool = False

    def with_adapter(self, step: str, adapter_dir: str = "adapter", *, merged: bool = False) -> ModelRef:
        """The ref of a policy trained as a new adapter on top of this one (e.g. LoRA PPO on the SFT model)."""
        return self.model_copy(update={"step": step, "adapters": [*self.adapters, DirRef(step=step, dir=adapter_dir)],
                                       "merged": merged})

    def full_model(self, step: str, model_dir: str = "model") -> ModelRef:
        """The ref of a policy whose full weights and tokenizer ``step`` published in ``model_dir``."""
        return self.model_copy(update={
            "step": step, "base": BaseRef(source="step", step=step, dir=model_dir), "adapters": [],
            "merged": False, "tokenizer": DirRef(step=step, dir=model_dir), "quantization": "none"})


def write_model_ref(out_dir: Path, ref: ModelRef) -> Path:
    """Write ``model_ref.json`` into ``out_dir`` atomically."""
    path = Path(out_dir) / MODEL_REF_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{MODEL_REF_FILE}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(ref.model_dump_json(indent=2, exclude_none=True) + "\n")
    os.replace(tmp, path)
    return path


def read_model_ref(step_dir: Path) -> ModelRef:
    """Read ``<step_dir>/model_ref.json``; ``BadInput`` naming the file when it is missing or malformed."""
    path = Path(step_dir) / MODEL_REF_FILE
    if not path.is_file():
        raise BadInput(f"no {MODEL_REF_FILE}: this step did not publish a model", uri=str(path))
    try:
        return ModelRef.model_validate_json(path.read_text())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        raise BadInput(f"invalid model reference: {first['msg']}", uri=str(path), field=where) from None


def torch_dtype(name: str) -> torch.dtype:
    import torch

    try:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    except KeyError:
        raise BadInput(f"unknown dtype {name!r}: use fp32, bf16 or fp16", field="model.dtype") from None


def default_device() -> torch.device:
    """The first CUDA GPU when there is one, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_model_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise BadInput(f"{what} not found (expected a Hugging Face model directory)", uri=str(path),
                       field="model.path")
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise BadInput(f"{what} has no config.json: not a Hugging Face model directory", uri=str(path),
                       field="model.path")
    return path


def resolve_base_dir(model_cfg: ModelConfig, store: ArtifactStore | None, cache_dir: Path) -> Path:
    """The local directory of a non-tiny base: the path itself, or a verified download from the store."""
    name = model_cfg.store_name
    if name is None:
        if model_cfg.is_tiny:
            raise BadInput("the tiny model is built by the sft stage, not loaded", field="model.path")
        return _check_model_dir(Path(model_cfg.path).expanduser(), "model.path")
    if store is None:
        raise BadInput(f"{model_cfg.path} needs an artifact store", field="model.path")
    return _download_store_model(store, f"models/{name}", cache_dir / name)


_DONE_MARKER = ".t2s-complete"


def store_base_digest(store: ArtifactStore, key: str) -> str | None:
    """Digest of the base weights under ``key``: its manifest's content digest, else names and sizes.

    A plain upload without ``_manifest.json`` can only be told apart by its listing; publish one for
    a sha256-backed digest. ``None`` when nothing is stored there.
    """
    from ..store.manifest import content_digest, read_manifest

    manifest = read_manifest(store, key)
    if manifest is not None:
        return manifest.digest
    infos = store.list(key)
    if not infos:
        return None
    cut = len(key.strip("/")) + 1
    return content_digest((i.key[cut:], i.size, None) for i in infos)


def local_base_digest(path: Path) -> str:
    """Digest of a local model directory from names, sizes and mtimes (hashing GBs per step is too slow)."""
    from ..store.base import local_files
    from ..store.manifest import content_digest

    rows = []
    for rel, file in local_files(Path(path)):
        st = file.stat()
        rows.append((rel, st.st_size, f"mtime:{st.st_mtime_ns}"))
    return content_digest(rows)


def base_digest(model_cfg: ModelConfig, store: ArtifactStore | None) -> str | None:
    """The digest of the base ``model_cfg`` names, for config hashes; ``None`` for tiny or a missing base."""
    if model_cfg.is_tiny:
        return None
    name = model_cfg.store_name
    if name is not None:
        return store_base_digest(store, f"models/{name}") if store is not None else None
    path = Path(model_cfg.path).expanduser()
    return local_base_digest(path) if path.is_dir() else None


def downloaded_digest(base_dir: Path) -> str | None:
    """The digest a verified store download was made from (its completion marker), else ``None``."""
    marker = Path(base_dir) / _DONE_MARKER
    return marker.read_text().strip() or None if marker.is_file() else None


def base_ref_for(model_cfg: ModelConfig, base_dir: Path) -> BaseRef:
    """The ``BaseRef`` of the base just loaded from ``base_dir``, with the digest of those very bytes."""
    name = model_cfg.store_name
    if name is not None:
        return BaseRef(source="store", key=f"models/{name}", digest=downloaded_digest(base_dir))
    path = Path(model_cfg.path).expanduser().resolve()
    return BaseRef(source="local", path=str(path), digest=local_base_digest(path))


def _download_store_model(store: ArtifactStore, key: str, cache_root: Path) -> Path:
    """Verified download of ``key`` into ``cache_root/<digest>``: a re-upload never reuses a stale copy."""
    from ..store import ArtifactNotFound
    from ..store.manifest import fetch, read_manifest

    manifest = read_manifest(store, key)
    digest = manifest.digest if manifest is not None else store_base_digest(store, key)
    if digest is None:
        raise BadInput(f"no base weights under {key}/ in the artifact store: upload the Hugging Face model "
                       f"directory there first", uri=store.uri_for(key), field="model.path")
    dest = Path(cache_root) / digest[:16]
    if downloaded_digest(dest) == digest and (manifest is None or all(
            (dest / f.path).is_file() and (dest / f.path).stat().st_size == f.size for f in manifest.files)):
        return dest
    (dest / _DONE_MARKER).unlink(missing_ok=True)
    try:
        if manifest is not None:
            fetch(store, key, dest, manifest=manifest)
        else:
            store.get_tree(key, dest)
    except ArtifactNotFound:
        raise BadInput(f"no base weights under {key}/ in the artifact store: upload the Hugging Face model "
                       f"directory there first", uri=store.uri_for(key), field="model.path") from None
    _check_model_dir(dest, f"{STORE_MODEL_PREFIX}{key.split('/', 1)[1]}")
    (dest / _DONE_MARKER).write_text(digest + "\n")
    return dest


def _check_base_digest(b: BaseRef, got: str | None) -> None:
    """Adapters only make sense on the base they were trained on: a different digest is bad input."""
    if b.digest is not None and got != b.digest:
        where = b.key if b.source == "store" else b.path
        raise BadInput(f"the policy was trained on base {where} with digest {b.digest}, but that base now has "
                       f"digest {got}: the base weights changed since training; rerun the training steps "
                       "(--force) or restore the original base", field="model.path")


def load_tokenizer(path: Path, *, trust_remote_code: bool = False) -> Any:
    """``AutoTokenizer`` from ``path``; a tokenizer without a pad token pads with its eos token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise BadInput("the tokenizer has neither a pad nor an eos token", uri=str(path))
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: Path, *, dtype: str = "fp32", quantization: str = "none",
                   trust_remote_code: bool = False, device: Any = None) -> Any:
    """``AutoModelForCausalLM`` from ``path`` in ``dtype`` (NF4 4-bit with ``quantization='4bit'``).

    Unquantized models are moved to ``device`` when given; 4-bit ones are placed on the current GPU.
    """
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype), "trust_remote_code": trust_remote_code}
    if quantization == "4bit":
        import torch
        from transformers import BitsAndBytesConfig

        from .lora import require_4bit_support

        require_4bit_support()
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype(dtype if dtype != "fp32" else "bf16"))
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    elif quantization != "none":
        raise BadInput(f"unknown quantization {quantization!r}", field="model.quantization")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot load a causal LM: {exc}", uri=str(path), field="model.path") from None
    if device is not None and quantization == "none":
        model = model.to(device)
    return model


def fetch_step_dir(ctx: StageContext, ref: DirRef) -> Path:
    """Local, verified copy of ``ref``: through ``ctx.input`` for upstream steps, else from the store.

    A step further up the lineage (predict_rl reading the SFT adapter that the RL step built on) is fetched
    directory by directory against that step's manifest, so only the files named are downloaded.
    """
    from ..stages.base import step_prefix
    from ..store.manifest import fetch, read_manifest

    if ref.step in ctx.upstream:
        path = ctx.input(ref.step) / ref.dir
    else:
        prefix = step_prefix(ctx.run_id, ref.step)
        manifest = read_manifest(ctx.store, prefix)
        if manifest is None:
            raise BadInput(f"the model lineage names step {ref.step!r}, which has not published "
                           f"{prefix}/_manifest.json", stage=ctx.step.name)
        wanted = [f for f in manifest.files if f.path.startswith(ref.dir.rstrip("/") + "/")]
        local = ctx.workdir / "lineage" / ref.step
        if wanted:
            fetch(ctx.store, prefix, local, manifest=manifest.model_copy(update={"files": wanted}))
        path = local / ref.dir
    if not path.is_dir():
        raise BadInput(f"the model lineage names {ref.dir}/ of step {ref.step!r}, which holds no such directory",
                       stage=ctx.step.name, uri=str(path))
    return path


def load_from_ref(ref: ModelRef, resolve: Callable[[DirRef], Path], *, store: ArtifactStore | None = None,
                  cache_dir: Path | None = None, device: Any = None, merge: bool | None = None) -> tuple[Any, Any]:
    """Rebuild the policy a :class:`ModelRef` describes; ``resolve`` maps a :class:`DirRef` to a local dir."""
    from .lora import load_adapters

    def base_dir(b: BaseRef) -> Path:
        if b.source == "step":
            return _check_model_dir(resolve(b.as_dir_ref()), f"{b.step}/{b.dir}")
        if b.source == "local":
            path = _check_model_dir(Path(str(b.path)), "base model")
            if b.digest is not None:
                _check_base_digest(b, local_base_digest(path))
            return path
        if store is None or cache_dir is None:
            raise BadInput(f"base {b.key} lives in the artifact store, but no store was given")
        path = _download_store_model(store, str(b.key), cache_dir / str(b.key).split("/", 1)[-1])
        _check_base_digest(b, downloaded_digest(path))
        return path

    if ref.merged and ref.adapters and ref.quantization == "none":
        path = resolve(DirRef(step=ref.step, dir="merged"))
        model = load_causal_lm(path, dtype=ref.dtype, trust_remote_code=ref.trust_remote_code, device=device)
    else:
        model = load_causal_lm(base_dir(ref.base), dtype=ref.dtype, quantization=ref.quantization,
                               trust_remote_code=ref.trust_remote_code, device=device)
        model = load_adapters(model, [resolve(a) for a in ref.adapters], merge=merge)
    tok_dir = resolve(ref.tokenizer) if isinstance(ref.tokenizer, DirRef) else base_dir(ref.tokenizer)
    tokenizer = load_tokenizer(tok_dir, trust_remote_code=ref.trust_remote_code)
    model.eval()
    return model, tokenizer


def load_policy_from_step(ctx: StageContext, step: str, *, device: Any = None,
                          merge: bool | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the policy that ``step`` (an upstream of ``ctx``'s step) published.

    ``device`` defaults to :func:`default_device`. The model is in eval mode with no adapter left
    trainable; wrap it with :func:`.lora.apply_lora` to train a new adapter on top.
    """
    ref = read_model_ref(ctx.input(step))
    return load_from_ref(ref, lambda r: fetch_step_dir(ctx, r), store=ctx.store,
                         cache_dir=ctx.workdir / "base_model", device=device or default_device(), merge=merge)
