"""infra/docker/Dockerfile: CUDA base matching the torch build, Python 3.11, the dependency set of
pyproject.toml (installed from it, never listed by hand), a non-root user. Docker itself is not needed."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> [(instruction, arguments)], continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            name = args.split(" AS ")[-1].strip() if " AS " in args else f"stage{len(stages)}"
            current = []
            stages[name] = current
        current.append((instruction, args.strip()))
    return stages


def _pip_installs(stage: list[tuple[str, str]]) -> list[list[str]]:
    """The argument lists of every ``pip install`` in the stage's RUN instructions."""
    installs = []
    for instruction, args in stage:
        if instruction != "RUN":
            continue
        for command in args.split("&&"):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"]:
                installs.append(words[2:])
    return installs


def _named_packages(arguments: list[str]) -> list[str]:
    """Requirement arguments that name a package (not the project itself, a file or an option's value)."""
    names, skip = [], False
    for word in arguments:
        if skip:
            skip = False
            continue
        if word in ("--extra-index-url", "--index-url", "--constraint", "-c", "-r", "--requirement"):
            skip = True
            continue
        if word.startswith("-") or word.startswith((".", "/")):
            continue
        names.append(word)
    return names


@pytest.fixture(scope="module")
def stages():
    return _stages()


@pytest.fixture(scope="module")
def pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_cluster_image_is_the_default_target_on_a_cuda_base_matching_its_torch_build(stages, pyproject):
    """What the image needs, whatever torch this machine has: the CUDA runtime of the base image is the one
    the torch wheel index is built for, and the pinned torch satisfies the project's own requirement."""
    assert list(stages)[-1] == "cluster"  # `docker build` without --target builds the last stage
    base = stages["cluster"][0][1]
    match = re.match(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(?:cudnn-)?runtime-ubuntu", base)
    assert match, base
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for i, a in stages["cluster"] if i == "ARG" and "=" in a}
    assert args["TORCH_INDEX"].endswith(f"/cu{match.group(1)}{match.group(2)}"), (base, args["TORCH_INDEX"])
    torch_requirement = next(d for d in pyproject["project"]["dependencies"] if Requirement(d).name == "torch")
    assert Version(args["TORCH_VERSION"]) in Requirement(torch_requirement).specifier
    # The constraint that pins it is the one the build checks after installing.
    runs = " ".join(a for i, a in stages["cluster"] if i == "RUN")
    assert 'echo "torch==${TORCH_VERSION}" > /tmp/constraints.txt' in runs
    assert "torch.__version__.startswith('${TORCH_VERSION}')" in runs


def test_python_311_and_a_non_root_user(stages):
    runs = " ".join(a for i, a in stages["cluster"] if i == "RUN")
    assert "--python 3.11" in runs
    assert stages["tracking"][0][1].startswith("python:3.11")
    for name in ("cluster", "tracking"):
        users = [a for i, a in stages[name] if i == "USER"]
        assert users and users[-1] not in ("root", "0"), name
        assert f"useradd --create-home --uid 1001 {users[-1]}" in " ".join(a for i, a in stages[name] if i == "RUN")


def test_cluster_stage_installs_the_project_with_its_cluster_extra(stages, pyproject):
    installs = _pip_installs(stages["cluster"])
    assert installs, "no pip install in the cluster stage"
    project = [w for args in installs for w in args if w.startswith(".[")]
    assert project == [".[cluster]"]
    assert "cluster" in pyproject["project"]["optional-dependencies"]
    # No hand-kept package list next to it: the only pin is torch's, and it is a constraint file.
    assert [name for args in installs for name in _named_packages(args)] == []
    # Every installed package is in the build context before the install that packages it.
    install_at = next(n for n, (i, a) in enumerate(stages["cluster"]) if i == "RUN" and ".[cluster]" in a)
    copied = {a.split()[0] for i, a in stages["cluster"][:install_at] if i == "COPY"}
    assert {"pyproject.toml", "cutpaste", "pipelines", "infra"} <= copied
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} <= copied


def test_tracking_stage_installs_exactly_the_tracking_extra(stages, pyproject):
    runs = " ".join(a for i, a in stages["tracking"] if i == "RUN")
    assert "['optional-dependencies']['tracking']" in runs and "-r /tmp/tracking.txt" in runs
    assert [name for args in _pip_installs(stages["tracking"]) for name in _named_packages(args)] == []
    tracking = pyproject["project"]["optional-dependencies"]["tracking"]
    assert any(d.startswith("mlflow[auth]") for d in tracking) and any(d.startswith("psycopg2") for d in tracking)
    cluster_mlflow = next(d for d in pyproject["project"]["optional-dependencies"]["cluster"] if d.startswith("mlflow"))
    assert cluster_mlflow.removeprefix("mlflow") in next(d for d in tracking if d.startswith("mlflow[auth]"))


def test_build_context_keeps_only_what_the_images_copy():
    ignore = (REPO / "infra" / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:1] == ["*"]
    for kept in ("!pyproject.toml", "!README.md", "!cutpaste", "!pipelines", "!infra"):
        assert kept in ignore
