"""``t2s export`` of a trained step of a real run: plain transformers decodes what predict decoded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT
from text2sql_core.models.generation import clean_sql
from text2sql_core.report import run_steps
from text2sql_core.stages.base import run_step

N = 12  # dev questions decoded both ways

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


def test_export_of_the_sft_step_decodes_exactly_as_its_predict_step(sft_undertrained, tmp_path: Path) -> None:
    steps = run_steps()
    cfg = sft_undertrained.clone(tmp_path, stages={"predict": {"copy_values": False, "execution_guided": 0,
                                                               "limit": N, "max_new_tokens": 48}})
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
    flats = [json.loads(x) for x in (store / steps.prepare / "dev_flat.jsonl").read_text().splitlines()[:N]]
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([f["prompt"] for f in flats]))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _DECODE, str(out), str(prompts)], capture_output=True, text=True,
                          timeout=600, check=False, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = [clean_sql(r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]
    predicted = [json.loads(x)["prediction"]
                 for x in (store / steps.predict_sft / "predictions.jsonl").read_text().splitlines()]
    assert plain == predicted
