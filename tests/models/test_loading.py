"""Loading bases (local, store), the model lineage file, LoRA adapters and the 4-bit check."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from text2sql_core.errors import BadInput, ChecksumMismatch
from text2sql_core.models.config import LoRAConfig, ModelConfig, TinyModelConfig
from text2sql_core.models.loading import (
    BaseRef,
    DirRef,
    ModelRef,
    load_causal_lm,
    load_from_ref,
    read_model_ref,
    resolve_base_dir,
    write_model_ref,
)
from text2sql_core.models.lora import apply_lora, load_adapters, trainable_parameters
from text2sql_core.models.tiny import build_tiny
from text2sql_core.store import LocalStore
from text2sql_core.store.manifest import publish

TEXTS = ["SELECT name FROM singer WHERE age > 30", "SELECT count(*) FROM concert WHERE year = 2014"] * 10
CFG = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=300, seed=5)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A small Llama saved as a Hugging Face directory: stands in for a pretrained base."""
    out = tmp_path_factory.mktemp("base") / "mini-llama"
    build_tiny(CFG, TEXTS, out)
    return out


def _logits(model, tok) -> torch.Tensor:
    ids = tok("SELECT name FROM singer", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits


def test_model_ref_roundtrip_and_derived_refs(tmp_path: Path) -> None:
    ref = ModelRef(step="sft", base=BaseRef(source="store", key="models/llama"),
                   adapters=[DirRef(step="sft", dir="adapter")], tokenizer=DirRef(step="sft", dir="adapter"),
                   dtype="bf16")
    write_model_ref(tmp_path, ref)
    assert read_model_ref(tmp_path) == ref
    on_top = ref.with_adapter("ppo")
    assert [a.step for a in on_top.adapters] == ["sft", "ppo"] and on_top.base == ref.base and on_top.step == "ppo"
    full = ref.full_model("ppo")
    assert full.base == BaseRef(source="step", step="ppo", dir="model") and full.adapters == []


def test_model_ref_errors_name_file_and_field(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="did not publish a model"):
        read_model_ref(tmp_path)
    (tmp_path / "model_ref.json").write_text(json.dumps({"format": 1, "step": "sft", "base": {"source": "hub"},
                                                         "tokenizer": {"step": "sft", "dir": "model"}}))
    with pytest.raises(BadInput, match=r"model_ref.json.*base.source"):
        read_model_ref(tmp_path)


def test_local_base_loads_and_missing_dirs_are_bad_input(base_dir: Path, tmp_path: Path) -> None:
    assert resolve_base_dir(ModelConfig(path=str(base_dir)), None, tmp_path) == base_dir
    with pytest.raises(BadInput, match="not found"):
        resolve_base_dir(ModelConfig(path=str(tmp_path / "nope")), None, tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no config.json"):
        resolve_base_dir(ModelConfig(path=str(tmp_path / "empty")), None, tmp_path)
    model = load_causal_lm(base_dir, dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_store_base_is_downloaded_and_verified(base_dir: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    cfg = ModelConfig(path="store://models/mini")
    with pytest.raises(BadInput, match="upload"):
        resolve_base_dir(cfg, store, tmp_path / "cache0")
    # a plain upload (no manifest) is fetched as a tree
    store.put_tree(base_dir, "models/mini")
    local = resolve_base_dir(cfg, store, tmp_path / "cache1")
    a, b = load_causal_lm(base_dir), load_causal_lm(local)
    ids = torch.tensor([[1, 5, 7]])
    assert torch.equal(a(ids).logits, b(ids).logits)
    # with a manifest every file is checked: a corrupted weight file is refused
    publish(store, "models/mini", base_dir, run_id="upload", step="upload", kind="model", config_hash="0" * 64,
            metrics={}, started_at=datetime.now(UTC))
    weights = next(k.key for k in store.list("models/mini") if k.key.endswith(".safetensors"))
    store.put_bytes(weights, b"corrupt")
    with pytest.raises(ChecksumMismatch):
        resolve_base_dir(cfg, store, tmp_path / "cache2")


def test_4bit_needs_bitsandbytes_and_a_gpu(base_dir: Path) -> None:
    with pytest.raises(BadInput, match=r"model\.quantization.*(bitsandbytes|GPU)"):
        load_causal_lm(base_dir, quantization="4bit")


def _train_like(model) -> None:
    """Give the adapter a non-zero update (LoRA B starts at zero, so a fresh adapter changes nothing)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)


def test_lora_chain_loads_merged_and_unmerged_alike(base_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    lora = LoRAConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    with pytest.raises(BadInput, match="gate_projx"):
        apply_lora(load_causal_lm(base_dir), lora.model_copy(update={"target_modules": ["gate_projx"]}))

    sft = apply_lora(load_causal_lm(base_dir), lora)
    trainable, total = trainable_parameters(sft)
    assert 0 < trainable < total and all("lora_" in n for n, p in sft.named_parameters() if p.requires_grad)
    _train_like(sft)
    sft.save_pretrained(str(tmp_path / "sft" / "adapter"))
    ppo = apply_lora(sft.merge_and_unload(), lora)  # PPO trains a new adapter on the merged SFT policy
    _train_like(ppo)
    ppo.save_pretrained(str(tmp_path / "ppo" / "adapter"))
    expected = _logits(ppo, tok)

    ref = ModelRef(step="sft", base=BaseRef(source="local", path=str(base_dir)),
                   adapters=[DirRef(step="sft", dir="adapter")], tokenizer=BaseRef(source="local", path=str(base_dir)))
    ref = ref.with_adapter("ppo")
    model, loaded_tok = load_from_ref(ref, lambda r: tmp_path / r.step / r.dir)
    assert torch.allclose(_logits(model, loaded_tok), expected, atol=1e-5)
    assert not any(p.requires_grad for p in model.parameters()) or not hasattr(model, "peft_config")
    # a quantized base keeps its adapters attached and active together: same function
    stacked = load_adapters(load_causal_lm(base_dir), [tmp_path / "sft" / "adapter", tmp_path / "ppo" / "adapter"],
                            merge=False)
    assert torch.allclose(_logits(stacked, tok), expected, atol=1e-5)
    base_only = load_causal_lm(base_dir)
    assert not torch.allclose(_logits(base_only, tok), expected, atol=1e-3)  # the adapters did change it


def test_reuploaded_base_is_refused_naming_both_digests(base_dir: Path, tmp_path: Path) -> None:
    """Adapters trained on one upload of ``models/<name>`` never load silently onto another one."""
    import shutil

    from text2sql_core.models.loading import base_ref_for, downloaded_digest, store_base_digest

    store = LocalStore(tmp_path / "store")
    cfg = ModelConfig(path="store://models/mini")
    publish(store, "models/mini", base_dir, run_id="upload", step="upload", kind="model", config_hash="0" * 64,
            metrics={}, started_at=datetime.now(UTC))
    first = resolve_base_dir(cfg, store, tmp_path / "cache")
    ref = ModelRef(step="sft", base=base_ref_for(cfg, first), tokenizer=DirRef(step="sft", dir="model"))
    old = store_base_digest(store, "models/mini")
    assert ref.base.digest == old == downloaded_digest(first)

    other = tmp_path / "other"
    build_tiny(CFG.model_copy(update={"seed": 6}), TEXTS, other)
    publish(store, "models/mini", other, run_id="upload", step="upload", kind="model", config_hash="0" * 64,
            metrics={}, started_at=datetime.now(UTC))
    new = store_base_digest(store, "models/mini")
    assert new != old
    # the download cache is keyed by digest: the stale copy is not reused
    second = resolve_base_dir(cfg, store, tmp_path / "cache")
    assert second != first and downloaded_digest(second) == new
    shutil.rmtree(first)
    with pytest.raises(BadInput, match=f"digest {old}.*digest {new}"):
        load_from_ref(ref, lambda r: base_dir, store=store, cache_dir=tmp_path / "cache")
    # a marker that no longer matches the manifest's file sizes is downloaded again
    weights = next(p for p in second.iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(b"x")
    assert resolve_base_dir(cfg, store, tmp_path / "cache") == second and weights.stat().st_size > 1


def test_local_base_digest_follows_the_files(base_dir: Path, tmp_path: Path) -> None:
    import shutil

    from text2sql_core.models.loading import base_ref_for

    local = tmp_path / "base"
    shutil.copytree(base_dir, local)
    ref = ModelRef(step="sft", base=base_ref_for(ModelConfig(path=str(local)), local),
                   tokenizer=BaseRef(source="local", path=str(local)))
    load_from_ref(ref, lambda r: local)
    (local / "config.json").write_text((local / "config.json").read_text() + " ")
    with pytest.raises(BadInput, match="base weights changed"):
        load_from_ref(ref, lambda r: local)
