"""Stages under torchrun on CPU (gloo): 2 ranks give the 1-rank results, rank 0 alone publishes, resume, nodes.

Every launch here is real: ``torch.distributed.run`` or ``t2s torchrun`` starting worker processes
that run the stages through :func:`text2sql_core.stages.base.run_step`. The model is the smallest
tiny Llama and the budgets are the least that show the point (sft: 12 steps), so each launch costs
the start-up of its processes more than its work.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.stages.rl_runs import rm_run  # noqa: F401  (a fixture)
from text2sql_core.config import RunConfig
from text2sql_core.graph import STEPS
from text2sql_core.stages.base import run_step

pytestmark = pytest.mark.slow

T2S = [sys.executable, "-m", "text2sql_core.cli"]
#: collectives give up after this long in these tests (a dead peer must not hang them)
TIMEOUT_S = 60


def _step(kind: str) -> str:
    """The name of the graph's first step of ``kind`` that reads the sft model (``predict_sft`` today)."""
    return next(s.name for s in STEPS if s.kind == kind and (kind == "sft" or s.model_from == "sft"))


SFT, PREDICT, RM_DATA = _step("sft"), _step("predict"), _step("rm_data")


def _config(root: Path, data_dir: Path, *, store: Path | None = None, **sft: Any) -> RunConfig:
    return RunConfig.model_validate({
        "run_id": "dist", "seed": 0, "workdir": str(root / "work"),
        "store": {"kind": "local", "local": {"path": str(store or root / "store")}},
        "data": {"train": str(data_dir / "train.json"), "dev": str(data_dir / "dev.json"),
                 "tables": str(data_dir / "tables.json"), "db_dir": str(data_dir / "database"), "max_train": 96},
        "model": {"path": "tiny", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                           "intermediate_size": 64, "vocab_size": 600}},
        "stages": {
            "sft": {"max_steps": 12, "batch_size": 8, "save_steps": 6, "logging_steps": 1, "learning_rate": 3e-3,
                    "num_threads": 1, **sft},
            "predict": {"batch_size": 8, "max_new_tokens": 16, "limit": 20, "execution_guided": 2,
                        "num_threads": 1},
            "rm_data": {"batch_size": 3, "num_candidates": 2, "max_new_tokens": 16, "limit": 9, "num_threads": 1,
                        "sandbox_processes": 1},
        },
    })


def _write(cfg: RunConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def _copy_steps(src_store: Path, dst_store: Path, *steps: str) -> None:
    for step in steps:
        shutil.copytree(src_store / "runs" / "dist" / step, dst_store / "runs" / "dist" / step,
                        ignore=shutil.ignore_patterns("_checkpoints"))


def _env() -> dict[str, str]:
    return {**os.environ, "T2S_LOG_FORMAT": "json", "T2S_COLLECTIVE_TIMEOUT_S": str(TIMEOUT_S)}


def _events(text: str, event: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            rec = json.loads(line)
            if rec.get("event") == event:
                out.append(rec)
    return out


def _losses(store: Path) -> list[float]:
    log = store / "runs" / "dist" / SFT / "loss_log.jsonl"
    return [json.loads(line)["loss"] for line in log.read_text().splitlines()]


def _weights(store: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(store / "runs" / "dist" / SFT / "model" / "model.safetensors"))


def _assert_same_training(got: Path, want: Path, *, steps: int) -> None:
    import torch

    a, b = _losses(got), _losses(want)
    assert len(a) == len(b) == steps
    for x, y in zip(a, b, strict=True):
        assert abs(x - y) <= 1e-4 * abs(y), (a, b)
    wa, wb = _weights(got), _weights(want)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5), k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory: pytest.TempPathFactory, demo_data_dir: Path) -> Path:
    """A 1-process run: prepare, sft (12 steps), predict and rm_data; returns its store."""
    root = tmp_path_factory.mktemp("one-rank")
    cfg = _config(root, demo_data_dir)
    for step in ("prepare", SFT, PREDICT, RM_DATA):
        run_step(cfg, step)
    return root / "store"


_DRIVER = textwrap.dedent('''
    """Run (config, step) pairs in order in one torchrun launch: one process start-up for several steps."""
    import sys
    from text2sql_core.config import load_run_config
    from text2sql_core.stages.base import run_step
    for pair in sys.argv[1:]:
        config, step = pair.split("::")
        run_step(load_run_config(config), step)
''')


def test_two_ranks_train_predict_and_mine_as_one_rank_does(one_rank: Path, demo_data_dir: Path,
                                                           tmp_path: Path) -> None:
    # sft from the same prepared data; predict and rm_data from the 1-rank sft model (so their
    # outputs can be compared byte for byte)
    train_store, infer_store = tmp_path / "train-store", tmp_path / "infer-store"
    _copy_steps(one_rank, train_store, "prepare")
    _copy_steps(one_rank, infer_store, "prepare", SFT)
    train_cfg = _write(_config(tmp_path / "a", demo_data_dir, store=train_store), tmp_path / "train.yaml")
    infer_cfg = _write(_config(tmp_path / "b", demo_data_dir, store=infer_store), tmp_path / "infer.yaml")
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    log_dir = tmp_path / "logs"  # one log file per rank: the ranks' lines never interleave
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        f"--log-dir={log_dir}", "--redirects=3", str(driver), f"{train_cfg}::{SFT}",
                        f"{infer_cfg}::{PREDICT}", f"{infer_cfg}::{RM_DATA}"],
                       capture_output=True, text=True, env=_env(), timeout=600, check=False)
    logs = "\n".join(p.read_text() for p in sorted(log_dir.rglob("*.log")))
    assert r.returncode == 0, (r.stderr + logs)[-4000:]

    # sft: the same per-step losses and weights, two ranks having split every global batch of 8
    _assert_same_training(train_store, one_rank, steps=12)
    manifest = json.loads((train_store / "runs" / "dist" / SFT / "_manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 12
    # one publisher: each step published once, each checkpoint once, by rank 0
    published = _events(logs, "step published")
    assert sorted(e["stage"] for e in published) == sorted([SFT, PREDICT, RM_DATA])
    assert {e.get("rank") for e in published} == {0}
    checkpoints = _events(logs, "checkpoint published")
    assert sorted(e["checkpoint_step"] for e in checkpoints) == [6, 12]
    # both ranks did start every step (each is a real worker, not a bystander)
    started = _events(logs, "step started")
    assert sorted((e["stage"], e["rank"]) for e in started) == sorted(
        (s, r) for s in (SFT, PREDICT, RM_DATA) for r in (0, 1))

    # predict and rm_data: the published files are byte-identical to the 1-rank run's
    for step, files in ((PREDICT, ("predictions.jsonl", "predictions.sql")),
                        (RM_DATA, ("train_pairs.jsonl", "eval_pairs.jsonl", "stats.json"))):
        for name in files:
            got = (infer_store / "runs" / "dist" / step / name).read_bytes()
            assert got == (one_rank / "runs" / "dist" / step / name).read_bytes(), (step, name)
            assert got


def test_ranks_train_disjoint_shares_of_every_planned_batch(one_rank: Path) -> None:
    """What the 2-rank sft run trained: rank r's share of each batch of the seeded plan, disjoint, complete."""
    from text2sql_core.data.jsonl import read_records
    from text2sql_core.models.batching import EncodedExample, PlannedBatch, plan_batches, shard_batch
    from text2sql_core.stages.sft import read_flat_pairs

    prepared = one_rank / "runs" / "dist" / "prepare"
    pairs = read_flat_pairs(prepared / "train_flat.jsonl")
    groups = [r["db_id"] for r in read_records(prepared / "train_meta.jsonl")]
    examples = [EncodedExample(input_ids=tuple(map(ord, p + o)), prompt_len=len(p)) for p, o in pairs]
    plan = plan_batches(examples, batch_size=8, num_batches=24, seed=0, groups=groups)
    assert any(len(b.examples) < 8 for b in plan)  # short last batches of a database occur
    for batch in plan:
        shares = [shard_batch(batch, r, 2).examples for r in range(2)]
        if len(batch.examples) > 1:
            assert not set(map(id, shares[0])) & set(map(id, shares[1]))
            assert PlannedBatch(shares[0] + shares[1], batch.prefix_len) == batch


def _children(pid: int) -> list[Any]:
    import psutil

    return psutil.Process(pid).children(recursive=True)


def _complete_checkpoints(store: Path) -> list[int]:
    ck = store / "runs" / "dist" / SFT / "_checkpoints"
    return sorted(int(d.name) for d in ck.iterdir() if (d / "_manifest.json").is_file()) if ck.is_dir() else []


def test_kill_9_of_a_rank_fails_the_launch_and_a_rerun_resumes_with_the_uninterrupted_weights(
        one_rank: Path, demo_data_dir: Path, tmp_path: Path) -> None:
    steps = {"max_steps": 60, "save_steps": 10, "logging_steps": 5}
    straight = tmp_path / "straight"
    _copy_steps(one_rank, straight / "store", "prepare")
    run_step(_config(straight, demo_data_dir, **steps), SFT)

    store = tmp_path / "store"
    _copy_steps(one_rank, store, "prepare")
    config = _write(_config(tmp_path, demo_data_dir, **steps), tmp_path / "run.yaml")
    cmd = [*T2S, "torchrun", "--standalone", "--nproc-per-node=2", "--", "stage", "run", SFT, "--config",
           str(config)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not _complete_checkpoints(store):
        assert proc.poll() is None, f"sft ended before its first checkpoint: {proc.stderr.read().decode()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint published in 300 s"
        time.sleep(0.02)
    workers = [p for p in _children(proc.pid) if p.environ().get("RANK") == "1"]
    assert len(workers) == 1, [p.cmdline() for p in _children(proc.pid)]
    workers[0].send_signal(signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode not in (0, 2)  # a killed worker is worth a retry: not a bad input
    assert not (store / "runs" / "dist" / SFT / "_manifest.json").exists()
    resume_at = _complete_checkpoints(store)[-1]
    assert 0 < resume_at < 60

    rerun = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    m = json.loads((store / "runs" / "dist" / SFT / "_manifest.json").read_text())["metrics"]
    assert m["resumed_from_step"] == resume_at and m["steps"] == m["optimizer_step"] == 60
    _assert_same_training(store, straight / "store", steps=12)  # 12 logged losses: one every 5 steps

    # published: a third launch skips the step on both ranks (rank 0 decides, nobody trains alone)
    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped (already published)") == 1


def _node(rank: int, port: int, config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*T2S, "torchrun", "--nnodes=2", f"--node-rank={rank}", "--nproc-per-node=1", "--master-addr=127.0.0.1",
         f"--master-port={port}", "--", "stage", "run", SFT, "--config", str(config)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_nodes_on_one_machine_train_as_one_rank(one_rank: Path, demo_data_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    _copy_steps(one_rank, store, "prepare")
    # one shared store, a local workdir per node (as the chart's Indexed Job pods have)
    configs = [_write(_config(tmp_path / f"node{n}", demo_data_dir, store=store), tmp_path / f"node{n}.yaml")
               for n in range(2)]
    port = _free_port()
    nodes = [_node(n, port, configs[n]) for n in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    _assert_same_training(store, one_rank, steps=12)
    assert len(_events(outs[0], "step published")) == 1 and not _events(outs[1], "step published")
    assert (tmp_path / "node1" / "work" / "dist" / SFT / "ranks" / "1").is_dir()
    assert not (tmp_path / "node0" / "work" / "dist" / SFT / "ranks").exists()


def test_bad_input_on_rank_1_only_exits_2_within_the_collective_timeout(one_rank: Path, demo_data_dir: Path,
                                                                       tmp_path: Path) -> None:
    good = tmp_path / "store"
    _copy_steps(one_rank, good, "prepare")
    configs = [_write(_config(tmp_path / "node0", demo_data_dir, store=good), tmp_path / "node0.yaml"),
               # node 1 reads a store where prepare was never published: a bad input on rank 1 alone
               _write(_config(tmp_path / "node1", demo_data_dir, store=tmp_path / "empty"), tmp_path / "node1.yaml")]
    port = _free_port()
    started = time.monotonic()
    nodes = [_node(n, port, configs[n]) for n in range(2)]
    outs = [p.communicate(timeout=TIMEOUT_S + 120)[0] for p in nodes]
    assert time.monotonic() - started < TIMEOUT_S + 120
    assert nodes[1].returncode == 2, outs[1][-3000:]
    assert "has not published" in outs[1]
    assert nodes[0].returncode == 1, outs[0][-3000:]  # its peer is gone: a retryable failure, not a hang
    assert not (good / "runs" / "dist" / SFT / "_manifest.json").exists()


# ---------------------------------------------------------------------------- grpo and dpo on 2 ranks

#: GRPO at the least budget that shows the rules: 2 steps of 4 prompts x 4 completions (2 prompts per rank),
#: batch-scaled rewards (a global std), DAPO's token-level loss (a global token count), a KL term, chunked passes
GRPO_RANKS = {"max_steps": 2, "batch_size": 4, "num_generations": 4, "mini_batch_size": 4, "max_new_tokens": 24,
              "train_prompts": 16, "scale_rewards": "batch", "loss_type": "dapo", "beta": 0.04,
              "learning_rate": 1e-2, "eval_train_prompts": 4, "eval_dev_prompts": 0, "eval_batch_size": 2,
              "save_steps": 1, "logging_steps": 1, "num_threads": 1}
#: DPO: 2 steps of 4 pairs (2 per rank), the NLL term on (its normaliser: the global batch's chosen tokens)
DPO_RANKS = {"max_steps": 2, "batch_size": 4, "eval_pairs": 4, "eval_steps": 1, "rpo_alpha": 1.0,
             "learning_rate": 1e-2, "max_new_tokens": 16, "eval_train_prompts": 0, "eval_dev_prompts": 0,
             "save_steps": 1, "logging_steps": 1, "num_threads": 1}
#: the logged values of a 2-rank step against the 1-rank step: the same samples and pairs, so they differ by
#: float error only (sums taken in another order, gradients averaged over the ranks)
RANKS_REL = 1e-4


def _with_algorithm(cfg: RunConfig, algorithm: str, settings: dict[str, Any]) -> RunConfig:
    doc = cfg.model_dump(mode="json")
    from text2sql_core.registry import RL_KINDS

    doc["rl"] = {**doc.get("rl", {}), "algorithm": algorithm}
    for kind in RL_KINDS:  # a dump carries every kind's defaults; a file naming another RL kind is refused
        doc["stages"].pop(kind, None)
    doc["stages"][algorithm] = settings
    return RunConfig.model_validate(doc)


def _rl_step(cfg: RunConfig) -> str:
    from text2sql_core.graph import steps_for
    from text2sql_core.registry import RL_KINDS

    return next(s.name for s in steps_for(cfg) if s.kind in RL_KINDS)


def _rl_log(store: Path, run_id: str, step: str, kind: str) -> list[dict[str, Any]]:
    lines = (store / "runs" / run_id / step / f"{kind}_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "step" in r]


def _two_ranks(config: Path, step: str) -> tuple[subprocess.CompletedProcess, str]:
    """``t2s torchrun`` of one step on 2 ranks; its output, one log file per rank (lines never interleave)."""
    log_dir = config.parent / f"logs-{step}"
    r = subprocess.run([*T2S, "torchrun", "--standalone", "--nproc-per-node=2", f"--log-dir={log_dir}",
                        "--redirects=3", "--", "stage", "run", step, "--config", str(config)], capture_output=True,
                       text=True, env=_env(), timeout=600, check=False)
    return r, "\n".join([r.stdout, r.stderr, *(f.read_text() for f in sorted(log_dir.rglob("*.log")))])


def _assert_rl_ranks_match(one: list[dict[str, Any]], two: list[dict[str, Any]], keys: tuple[str, ...],
                           steps: int) -> None:
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, steps + 1))
    for a, b in zip(one, two, strict=True):
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=RANKS_REL, abs=1e-6), (key, a, b)


def _assert_published_once(out: str, step: str, checkpoints: list[int]) -> None:
    published = _events(out, "step published")
    assert [(e["stage"], e.get("rank")) for e in published] == [(step, 0)], published
    assert sorted(e["checkpoint_step"] for e in _events(out, "checkpoint published")) == checkpoints
    assert {e.get("rank") for e in _events(out, "progress")} <= {0}  # rank 0 alone reports the global values
    assert sorted(e["rank"] for e in _events(out, "step started")) == [0, 1]


def test_grpo_on_two_ranks_takes_the_one_rank_steps(sft_undertrained, tmp_path: Path) -> None:
    one = _with_algorithm(sft_undertrained.clone(tmp_path / "one", run_id="dist"), "grpo", GRPO_RANKS)
    two = _with_algorithm(sft_undertrained.clone(tmp_path / "two", run_id="dist"), "grpo", GRPO_RANKS)
    step = _rl_step(one)
    run_step(one, step)
    r, out = _two_ranks(_write(two, tmp_path / "two.yaml"), step)
    assert r.returncode == 0, out[-4000:]

    a = _rl_log(tmp_path / "one" / "store", "dist", step, "grpo")
    b = _rl_log(tmp_path / "two" / "store", "dist", step, "grpo")
    # per-row seeded sampling: each completion is the one a single process samples, so rewards, losses, KL,
    # entropies and clip shares are the 1-rank values (step 2 after an update from all-reduced gradients)
    _assert_rl_ranks_match(a, b, ("reward", "reward_std", "frac_reward_zero_std", "completion_length",
                                  "policy_loss", "kl", "entropy", "clip_low", "clip_high", "exec_match"), steps=2)
    assert a[0]["frac_reward_zero_std"] < 1.0  # some group had something to learn from
    assert a[0]["policy_loss"] != 0.0 and a[1]["kl"] > 0.0
    # the greedy evaluations before and after (generation batches shared by the ranks) are the 1-rank ones
    evals = [json.loads((tmp_path / n / "store" / "runs" / "dist" / step / "eval.json").read_text())
             for n in ("one", "two")]
    assert evals[1] == evals[0] and "execution_accuracy" in evals[0]["before"]["train"]
    _assert_published_once(out, step, checkpoints=[1])


def test_dpo_on_two_ranks_takes_the_one_rank_steps(one_rank: Path, demo_data_dir: Path, tmp_path: Path) -> None:
    configs = {}
    for name in ("one", "two"):
        _copy_steps(one_rank, tmp_path / name / "store", "prepare", SFT, RM_DATA)
        configs[name] = _with_algorithm(_config(tmp_path / name, demo_data_dir), "dpo", DPO_RANKS)
    pairs = (one_rank / "runs" / "dist" / RM_DATA / "train_pairs.jsonl").read_text().splitlines()
    assert len(pairs) >= 8  # two steps of 4 distinct pairs
    step = _rl_step(configs["one"])
    run_step(configs["one"], step)
    r, out = _two_ranks(_write(configs["two"], tmp_path / "two.yaml"), step)
    assert r.returncode == 0, out[-4000:]

    a = _rl_log(tmp_path / "one" / "store", "dist", step, "dpo")
    b = _rl_log(tmp_path / "two" / "store", "dist", step, "dpo")
    # step 1 starts at the reference (loss log 2, margin 0); step 2 follows one update of all-reduced gradients
    _assert_rl_ranks_match(a, b, ("loss", "dpo_loss", "nll_chosen", "margin", "accuracy", "rewards_chosen",
                                  "rewards_rejected", "logp_chosen", "logp_rejected", "grad_norm",
                                  "eval_accuracy", "eval_margin"), steps=2)
    assert a[1]["margin"] != 0.0
    _assert_published_once(out, step, checkpoints=[1])


#: PPO: 2 steps of 4 prompts (2 per rank) in one global mini-batch, the hybrid reward (the frozen reward
#: model's score and execution), whitened advantages (global statistics), no critic warm-up (the actor
#: trains at step 1, so step 2's samples follow an update from all-reduced gradients)
PPO_RANKS = {"max_steps": 2, "batch_size": 4, "mini_batch_size": 4, "max_new_tokens": 24, "train_prompts": 16,
             "reward": {"mode": "hybrid"}, "critic_warmup_steps": 0, "actor_learning_rate": 1e-2,
             "eval_train_prompts": 4, "eval_dev_prompts": 0, "eval_batch_size": 2, "save_steps": 1,
             "logging_steps": 1, "num_threads": 1}


def test_ppo_on_two_ranks_takes_the_one_rank_steps(rm_run, tmp_path: Path) -> None:  # noqa: F811
    one = _with_algorithm(rm_run.clone(tmp_path / "one"), "ppo", PPO_RANKS)
    two = _with_algorithm(rm_run.clone(tmp_path / "two"), "ppo", PPO_RANKS)
    step = _rl_step(one)
    run_step(one, step)
    r, out = _two_ranks(_write(two, tmp_path / "two.yaml"), step)
    assert r.returncode == 0, out[-4000:]

    a = _rl_log(tmp_path / "one" / "store", one.run_id, step, "ppo")
    b = _rl_log(tmp_path / "two" / "store", two.run_id, step, "ppo")
    # per-row seeded sampling: each rank's responses are the ones one process samples; the token-mean losses
    # carry each rank's share of the mini-batch's tokens: rewards, KL, values, losses and entropy of both
    # steps are the 1-rank values (step 2 after one update of actor and critic from all-reduced gradients)
    _assert_rl_ranks_match(a, b, ("reward", "reward_rm", "reward_execution", "exec_match", "kl", "response_length",
                                  "value_mean", "policy_loss", "value_loss", "entropy", "approx_kl",
                                  "clip_fraction"), steps=2)
    assert a[1]["kl"] > 0.1 and a[1]["reward"] != a[0]["reward"]  # the actor moved after step 1
    # the greedy answers after: the 1-rank ones (every rank evaluates them all)
    evals = [json.loads((tmp_path / n / "store" / "runs" / one.run_id / step / "eval.json").read_text())
             for n in ("one", "two")]
    for when in ("before", "after"):
        assert evals[1][when]["train"] == pytest.approx(evals[0][when]["train"], rel=RANKS_REL), when
    _assert_published_once(out, step, checkpoints=[1])
