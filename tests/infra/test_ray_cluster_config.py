"""ray_cluster.yaml: Ray's own schema, the environment the nodes need, and the validator's errors."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from infra.validate import (
    InfraConfigError,
    cluster_config_problems,
    docker_env,
    ray_schema,
    validate_cluster_config,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "ray_cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "ray_cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _without_env(config: dict, key: str) -> dict:
    changed = copy.deepcopy(config)
    options = changed["docker"]["run_options"]
    changed["docker"]["run_options"] = [o for o in options if f"{key}=" not in o]
    return changed


def test_matches_the_schema_shipped_with_ray(config):
    schema = ray_schema()
    assert schema["$schema"].startswith("http://json-schema.org/draft-07")
    jsonschema.validate(config, schema)  # raises on the first violation
    assert cluster_config_problems(config) == []


def test_head_is_cpu_and_workers_are_single_and_multi_gpu(config):
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpus = sorted(t["resources"]["GPU"] for name, t in types.items() if name != config["head_node_type"])
    assert gpus[0] == 1 and gpus[-1] > 1
    assert all(t["min_workers"] <= t["max_workers"] for n, t in types.items() if n != config["head_node_type"])
    assert config["idle_timeout_minutes"] > 0 and config["max_workers"] >= 1
    assert config["setup_commands"] and config["file_mounts"]


def test_nodes_see_tracking_server_bucket_region_cache_and_token_auth(config):
    env = docker_env(config)
    assert env["MLFLOW_TRACKING_URI"].startswith("http")
    assert env["AWS_DEFAULT_REGION"] == config["provider"]["region"]
    assert env["CUTPASTE_CACHE_DIR"]  # the variable cutpaste/storage/cache.py reads
    assert env["RAY_AUTH_MODE"] == "token"
    # Every node and the submitting laptop share one token file, copied from the laptop.
    assert "~/.ray/auth_token" in config["file_mounts"]
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head


def test_image_is_the_project_image_pinned(config):
    image = config["docker"]["image"]
    assert "cutpaste" in image and not image.endswith(":latest")


@pytest.mark.parametrize("key", ["MLFLOW_TRACKING_URI", "AWS_DEFAULT_REGION"])
def test_missing_tracking_or_s3_setting_is_named(tmp_path, config, key):
    path = _write(tmp_path, _without_env(config, key))
    with pytest.raises(InfraConfigError, match=rf"docker\.run_options: no '--env {key}=\.\.\.'"):
        validate_cluster_config(path)
    result = subprocess.run(
        [sys.executable, str(REPO / "infra" / "validate.py"), str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert key in result.stderr and str(path) in result.stderr


def test_schema_violation_names_the_field(tmp_path, config):
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_1x"]["resources"]["GPU"] = "one"
    broken["idle_timeout_minutes"] = "ten"
    problems = cluster_config_problems(broken)
    assert any(p.startswith("available_node_types.gpu_1x.resources.GPU:") for p in problems), problems
    assert any(p.startswith("idle_timeout_minutes:") for p in problems), problems


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c["head_start_ray_commands"].__setitem__(1, "ray start --head --dashboard-host=0.0.0.0"), "0.0.0.0"),
        (lambda c: c["docker"]["run_options"].append("--env RAY_AUTH_MODE=disabled"), "RAY_AUTH_MODE=token"),
        (lambda c: c["docker"]["run_options"].append("--env AWS_SECRET_ACCESS_KEY=abc123"), "AWS_SECRET_ACCESS_KEY"),
        (lambda c: c["docker"]["run_options"].append("--env AWS_ACCESS_KEY_ID=AKIAABCDEFGHIJKLMNOP"), "credential"),
        (lambda c: c["docker"]["run_options"].append("--env MLFLOW_TRACKING_URI=sqlite:///mlflow.db"), "http(s)"),
        (lambda c: c["docker"].__setitem__("image", "cutpaste:latest"), "docker.image"),
        (lambda c: c["available_node_types"].pop("gpu_1x") and c["available_node_types"].pop("gpu_4x"), "GPU"),
    ],
    ids=["public-dashboard", "auth-off", "inline-secret", "access-key", "sqlite-tracking", "latest-tag", "no-gpu"],
)
def test_project_rules(config, change, expected):
    changed = copy.deepcopy(config)
    change(changed)
    problems = cluster_config_problems(changed)
    assert any(expected in p for p in problems), problems


def test_cli_checks_every_cluster_file():
    files = [str(CONFIG), *sorted(str(p) for p in (REPO / "infra" / "k8s").glob("*.yaml"))]
    result = subprocess.run(
        [sys.executable, str(REPO / "infra" / "validate.py"), *files], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" ok") == len(files)
