"""The CLI imports only the command it runs, and what a newcomer meets first behaves: errors, status, hints."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from text2sql_core import cli
from text2sql_core.cli import COMMANDS, main
from text2sql_core.config import RunConfig, load_run_config

T2S = [sys.executable, "-m", "text2sql_core.cli"]


def t2s(*args: object, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*T2S, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False, env=_env())


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def test_the_command_table_lists_every_command_module_with_its_own_help():
    modules = {m.name for m in pkgutil.iter_modules(cli.__path__) if not m.name.startswith("_")}
    assert {module for module, _ in COMMANDS.values()} == modules
    for name, (module, help_line) in COMMANDS.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"text2sql_core.cli.{module}").register(sub)
        action = next(a for a in sub._choices_actions if a.dest == name)
        assert action.help == help_line, name


_IMPORTS = """
import sys
from text2sql_core.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("LOADED", " ".join(sorted(m for m in sys.modules if m.split(".")[0] in
      ("matplotlib", "pydantic", "torch", "yaml", "sqlglot", "kubernetes", "structlog") or
      m.startswith("text2sql_core.cli."))))
"""


def _loaded(*argv: str, cwd: Path = REPO_ROOT) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", _IMPORTS, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False, env=_env())
    line = next(x for x in proc.stdout.splitlines() if x.startswith("LOADED"))
    return set(line.split()[1:])


def test_help_imports_no_command_module_and_no_heavy_library():
    loaded = _loaded("--help")
    assert not {m for m in loaded if m.startswith("text2sql_core.cli.") and m != "text2sql_core.cli._flags"}
    assert not {m.split(".")[0] for m in loaded} & {"pydantic", "yaml", "kubernetes", "structlog", "matplotlib"}
    sql_help = _loaded("sql", "--help")
    assert "text2sql_core.cli.sql" in sql_help and "text2sql_core.cli.controller" not in sql_help


def test_eval_draws_no_chart_and_imports_no_matplotlib_with_no_chart(spider_sample, tmp_path):
    gold = tmp_path / "gold.sql"
    gold.write_text("".join((spider_sample / "dev_gold.sql").read_text().splitlines(keepends=True)[:5]))
    pred = tmp_path / "pred.sql"
    pred.write_text("".join(line.split("\t")[0] + "\n" for line in gold.read_text().splitlines()))
    args = ["eval", "--gold", gold, "--pred", pred, "--db", spider_sample / "database", "--tables",
            spider_sample / "tables.json", "--workers", "0", "--no-progress"]
    assert not any(m.startswith("matplotlib") for m in _loaded(*map(str, args), "--out", str(tmp_path / "a"),
                                                                "--no-chart"))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["per_example.tsv", "report.md", "summary.json"]
    assert "scores.png" not in (tmp_path / "a" / "report.md").read_text()
    assert any(m.startswith("matplotlib") for m in _loaded(*map(str, args), "--out", str(tmp_path / "b")))
    assert (tmp_path / "b" / "scores.png").is_file()


def test_a_no_op_stage_run_of_a_published_step_imports_no_torch(tmp_path):
    """Skipping a published step reads manifests only: torch (about 1 s of a 1.3 s no-op) stays unloaded."""
    for argv in (["demo-data", "--out", "data", "--size", "small"], ["stage", "run", "prepare"]):
        done = subprocess.run([sys.executable, "-m", "text2sql_core.cli", *argv], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, check=False, env=_env())
        assert done.returncode == 0, done.stderr[-2000:]
    loaded = _loaded("stage", "run", "prepare", cwd=tmp_path)
    assert "text2sql_core.cli.stage" in loaded and "torch" not in loaded


def test_an_error_is_one_line_naming_the_flag_the_user_typed(spider_sample, tmp_path):
    pred = tmp_path / "pred.sql"
    pred.write_text("SELECT 1\n" * 337)
    res = t2s("eval", "--gold", spider_sample / "dev_gold.sql", "--pred", pred, "--db", spider_sample / "database",
              "--out", tmp_path / "out")
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("t2s: error: field `--tables`: ")
    res = t2s("eval", "--gold", spider_sample / "dev_gold.sql", "--pred", pred, "--db", spider_sample / "database",
              "--tables", spider_sample / "tables.json", "--out", tmp_path / "out", "--row-cap", "0")
    assert res.returncode == 2 and res.stderr.startswith("t2s: error: field `--row-cap`: ")


def test_torchrun_help_helps():
    for argv in (["torchrun", "--help"], ["torchrun"]):
        res = t2s(*argv)
        assert res.returncode == 0 and res.stdout.startswith("usage: t2s torchrun") and "--nproc-per-node" in res.stdout


def test_config_defaults_comments_every_knob_and_has_a_run_id_of_its_own(tmp_path, capsys):
    assert main(["config", "defaults"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "run.yaml"
    path.write_text(text)
    cfg = load_run_config(path)
    assert cfg.run_id != RunConfig().run_id and cfg.run_id.startswith("run-")
    assert cfg == RunConfig(run_id=cfg.run_id)  # every default as it is
    lines = text.splitlines()
    seed = lines.index("seed: 42")
    assert lines[seed - 1] == "# " + RunConfig.model_fields["seed"].description
    # every key line has a comment above it
    keys = [i for i, line in enumerate(lines) if not line.lstrip().startswith("#")]
    assert all(lines[i - 1].lstrip().startswith("#") for i in keys)
    assert yaml.safe_load(text)["stages"]


def test_pipeline_run_without_config_or_data_says_what_to_do_and_leaves_nothing(tmp_path):
    res = t2s("pipeline", "run", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "examples/demo.yaml" in res.stderr and "t2s config defaults" in res.stderr
    assert list(tmp_path.iterdir()) == []


def _published_run(tmp_path: Path, run_id: str) -> Path:
    from tests.k8s.conftest import publish_step
    from text2sql_core.store import LocalStore

    publish_step(LocalStore(tmp_path / ".t2s" / "store"), run_id, "prepare", {"train_examples": 3})
    (tmp_path / "cfg").mkdir()
    config = tmp_path / "cfg" / "run.yaml"
    config.write_text(f"run_id: {run_id}\nstore:\n  kind: local\n  local:\n    path: .t2s/store\n")
    return config


def test_status_resolves_the_store_as_pipeline_run_does_and_fails_for_an_unknown_run(tmp_path, monkeypatch,
                                                                                       capsys):
    config = _published_run(tmp_path, "known")
    monkeypatch.chdir(tmp_path)  # where `t2s pipeline run` ran: the store path is relative to it
    assert main(["status", "--config", str(config), "--output", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {s["step"]: s["state"] for s in doc["steps"]}["prepare"] == "published"
    assert main(["status", "--config", str(config), "--run-id", "nosuchrun"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "field `--run-id`" in err and "no run 'nosuchrun'" in err
    monkeypatch.chdir(tmp_path / "cfg")  # elsewhere: no store there, said so
    assert main(["status", "--config", str(config)]) == 2
    assert "artifact store '.t2s/store' not found" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["stage", "list"]])
def test_commands_still_work_through_the_console_entry(argv):
    res = t2s(*argv)
    assert res.returncode == 0, res.stderr
