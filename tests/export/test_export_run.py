"""``t2s export`` of a trained step of a real run: plain transformers decodes what predict decoded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT
from tests.stages.rl_runs import rm_run  # noqa: F401  (a fixture)
from text2sql_core.models.generation import clean_sql
from text2sql_core.report import run_steps
from text2sql_core.stages.base import run_step

N = 12  # dev questions decoded both ways
#: a short PPO run: enough to move the adapter off zero, so that merging it matters
PPO_SHORT = {"max_steps": 2, "batch_size": 4, "max_new_tokens": 32, "reward": {"mode": "execution"},
             "eval_train_prompts": 0, "eval_dev_prompts": 0, "save_steps": 100}
UNCONSTRAINED = {"copy_values": False, "execution_guided": 0, "max_new_tokens": 48}

#: a user of the export: plain transformers, greedy one prompt at a time, the text up to </s>
_DECODE = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
out, prompts = sys.argv[1], json.loads(open(sys.argv[2]).read())
tok = AutoTokenizer.from_pretrained(out)
model = AutoModelForCausalLM.from_pretrained(out).eval()
raw = []
with torch.no_grad():
    for p in prompts:
        ids = tok(p, return_tensors="pt")
        new = model.generate(**ids)[0, ids["input_ids"].shape[1]:]
        raw.append(tok.decode(new, skip_special_tokens=True))
assert not any(m.startswith("text2sql_core") for m in sys.modules)
print(json.dumps(raw))
"""


def _decode_plain(out: Path, prompts: list[str], tmp_path: Path) -> list[str]:
    """``prompts`` decoded by a process that never imports this project, cut to SQL as predict cuts it."""
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(prompts))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _DECODE, str(out), str(path)], capture_output=True, text=True,
                          timeout=600, check=False, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [clean_sql(r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_the_export_step_publishes_the_rl_policy_that_predict_rl_decoded(rm_run, tmp_path: Path) -> None:  # noqa: F811
    steps = run_steps()
    cfg = rm_run.clone(tmp_path, stages={"ppo": PPO_SHORT, "predict": UNCONSTRAINED})
    for step in (steps.predict_sft, steps.evaluate_sft, steps.rl, steps.predict_rl, steps.evaluate_rl, "export"):
        run_step(cfg, step)
    store = Path(cfg.store.local.path) / "runs" / cfg.run_id
    out = store / "export"
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["kind"] == "export" and manifest["metrics"]["adapter_rank"] == 0  # the tiny base: full model
    card = (out / "README.md").read_text()
    assert "| all |" in card and "RL (ppo) EX" in card and "SFT EX" in card
    flats = _jsonl(store / steps.prepare / "dev_flat.jsonl")[:N]
    predicted = [r["prediction"] for r in _jsonl(store / steps.predict_rl / "predictions.jsonl")][:N]
    assert _decode_plain(out, [f["prompt"] for f in flats], tmp_path) == predicted


def test_export_of_the_sft_step_decodes_exactly_as_its_predict_step(sft_undertrained, tmp_path: Path) -> None:
    steps = run_steps()
    cfg = sft_undertrained.clone(tmp_path, stages={"predict": {**UNCONSTRAINED, "limit": N}})
    run_step(cfg, steps.predict_sft)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    out = tmp_path / "export"
    res = subprocess.run([sys.executable, "-m", "text2sql_core.cli", "export", "--config", str(config), "--step",
                          steps.sft, "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "full model, no adapter" in res.stdout and not (out / "adapter").exists()
    card = (out / "README.md").read_text()
    assert "trained from scratch in this run" in card and "###Response:" in card
    assert json.loads((out / "generation_config.json").read_text())["max_new_tokens"] == 48

    store = Path(cfg.store.local.path) / "runs" / cfg.run_id
    flats = _jsonl(store / steps.prepare / "dev_flat.jsonl")[:N]
    predicted = [r["prediction"] for r in _jsonl(store / steps.predict_sft / "predictions.jsonl")]
    assert _decode_plain(out, [f["prompt"] for f in flats], tmp_path) == predicted
