"""Export: the merged model and the combined adapter load with plain transformers / peft, same function."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from text2sql_core.errors import BadInput
from text2sql_core.export import CardInfo, combine_adapters, export_policy
from text2sql_core.models.config import LoRAConfig, TinyModelConfig
from text2sql_core.models.loading import BaseRef, DirRef, ModelRef, load_causal_lm, load_from_ref
from text2sql_core.models.lora import apply_lora
from text2sql_core.models.tiny import build_tiny

TEXTS = ["SELECT name FROM singer WHERE age > 30", "SELECT count(*) FROM concert WHERE year = 2014"] * 10
CFG = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=300, seed=7)
PROMPTS = ["SELECT name FROM", "SELECT count(*) FROM concert WHERE"]

#: runs in a fresh interpreter that never imports text2sql_core: what a user of the export has
_PLAIN = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
out, prompts = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(out)
merged = AutoModelForCausalLM.from_pretrained(out).eval()
result = {"merged": [], "adapter": [], "greedy": []}
models = [("merged", merged)]
if len(sys.argv) > 3:
    from peft import PeftModel
    base = AutoModelForCausalLM.from_pretrained(sys.argv[3])
    models.append(("adapter", PeftModel.from_pretrained(base, out + "/adapter").eval()))
with torch.no_grad():
    for p in prompts:
        ids = tok(p, return_tensors="pt")
        for name, m in models:
            result[name].append(m(**ids).logits[0].tolist())
        gen = merged.generate(**ids)  # generation_config.json: greedy, eos
        result["greedy"].append(gen[0, ids["input_ids"].shape[1]:].tolist())
assert not any(m.startswith("text2sql_core") for m in sys.modules)
print(json.dumps(result))
"""


def _plain(out: Path, *base: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _PLAIN, str(out), json.dumps(PROMPTS), *map(str, base)],
                          capture_output=True, text=True, timeout=300, check=False, env=env, cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def lineage(tmp_path_factory) -> tuple[Path, ModelRef]:
    """A base others can download (stands in for a pretrained model), an SFT and an RL adapter on it."""
    root = tmp_path_factory.mktemp("lineage")
    base = root / "base"
    build_tiny(CFG, TEXTS, base)
    specs = (("sft", 4, 8, ["q_proj", "v_proj"]), ("rl", 8, 16, ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                 "gate_proj", "up_proj", "down_proj"]))
    model = load_causal_lm(base)
    for k, (step, r, alpha, targets) in enumerate(specs):
        torch.manual_seed(k)
        peft = apply_lora(model, LoRAConfig(r=r, alpha=alpha, dropout=0.0, target_modules=targets))
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.3)
        peft.save_pretrained(str(root / step / "adapter"))
        model = peft.merge_and_unload()  # the RL adapter is trained on the base with SFT merged in
    ref = ModelRef(step="rl", base=BaseRef(source="local", path=str(base)),
                   adapters=[DirRef(step="sft", dir="adapter"), DirRef(step="rl", dir="adapter")],
                   tokenizer=BaseRef(source="local", path=str(base)))
    return root, ref


def _info(**kw) -> CardInfo:
    return CardInfo(run_id="r", step="rl", base="/models/base", base_digest="abc", max_new_tokens=6,
                    scores={"SFT": {"all": {"ex": 0.5, "em": 0.4}}, "RL (rl)": {"all": {"ex": 0.6, "em": 0.5}}},
                    example={"prompt": "###Input:\nHow many?\n\n###Response:", "output": "SELECT count(*) FROM t"},
                    **kw)


def test_merged_model_and_combined_adapter_load_without_this_project(lineage):
    root, ref = lineage
    resolve = lambda r: root / r.step / r.dir
    expected_model, tok = load_from_ref(ref, resolve)
    out = root / "export"
    metrics = export_policy(ref, resolve, out, info=_info(), base_dir=Path(str(ref.base.path)))
    assert metrics["adapter_rank"] == 12
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 12 and adapter["lora_alpha"] == 12 and not adapter["modules_to_save"]
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"}
    card = (out / "README.md").read_text()
    assert "--enable-lora --max-lora-rank 16" in card and "rank 12" in card and "SELECT count(*) FROM t" in card
    assert "| all | 0.500 | 0.400 | 0.600 | 0.500 |" in card
    assert json.loads((out / "generation_config.json").read_text())["do_sample"] is False

    plain = _plain(out, Path(str(ref.base.path)))
    for k, p in enumerate(PROMPTS):
        with torch.no_grad():
            want = expected_model(**tok(p, return_tensors="pt")).logits[0]
        assert torch.allclose(torch.tensor(plain["merged"][k]), want, atol=1e-4)
        assert torch.allclose(torch.tensor(plain["adapter"][k]), want, atol=1e-4)  # concatenation is exact
        with torch.no_grad():
            ids = tok(p, return_tensors="pt")
            greedy = expected_model.generate(**ids, max_new_tokens=6, do_sample=False,
                                             pad_token_id=tok.pad_token_id)[0, ids["input_ids"].shape[1]:]
        assert plain["greedy"][k] == greedy.tolist()[:len(plain["greedy"][k])]


def test_a_from_scratch_base_exports_as_a_full_model_only(lineage, tmp_path):
    root, ref = lineage
    out = tmp_path / "full"
    metrics = export_policy(ref, lambda r: root / r.step / r.dir, out, info=_info(), base_dir=None)
    assert metrics["adapter_rank"] == 0 and not (out / "adapter").exists()
    assert "No adapter" in (out / "README.md").read_text()
    assert len(_plain(out)["merged"]) == len(PROMPTS)
    with pytest.raises(BadInput, match="already exists"):
        export_policy(ref, lambda r: root / r.step / r.dir, out, info=_info(), base_dir=None)


def test_adapters_that_are_not_plain_lora_are_refused(lineage, tmp_path):
    root, _ = lineage
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((root / "sft" / "adapter" / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "modules_to_save": ["lm_head"]}))
    (bad / "adapter_model.safetensors").write_bytes((root / "sft" / "adapter" / "adapter_model.safetensors")
                                                    .read_bytes())
    with pytest.raises(BadInput, match="modules_to_save"):
        combine_adapters([root / "sft" / "adapter", bad], tmp_path / "out", base_name="b")
