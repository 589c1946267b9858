"""infra/k8s: every manifest parses and has what Kubernetes and KubeRay require; entrypoints exist; secrets
are referenced, never inlined."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from infra.validate import InfraConfigError, manifest_problems, validate_manifests

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
FILES = sorted(K8S.glob("*.yaml"))


def _all() -> list[dict]:
    return [doc for path in FILES for doc in yaml.safe_load_all(path.read_text()) if doc]


def _one(kind: str, name: str | None = None) -> dict:
    found = [d for d in _all() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def _containers(pod_spec: dict) -> list[dict]:
    return pod_spec["template"]["spec"]["containers"]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_manifest_is_valid(path):
    documents = validate_manifests(path)
    for doc in documents:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]


def test_the_expected_objects_are_there():
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in _all())
    for expected in [
        ("RayCluster", "cutpaste"),
        ("RayJob", "cutpaste-benchmark"),
        ("Deployment", "cutpaste-mlflow"),
        ("Service", "cutpaste-mlflow"),
        ("StatefulSet", "cutpaste-postgres"),
        ("Service", "cutpaste-postgres"),
        ("ConfigMap", "cutpaste-env"),
    ]:
        assert expected in kinds


def test_raycluster_has_a_head_and_autoscaled_gpu_groups_with_token_auth():
    cluster = _one("RayCluster", "cutpaste")
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["authOptions"]["mode"] == "token" and spec["rayVersion"] >= "2.52"
    assert isinstance(spec["headGroupSpec"]["rayStartParams"], dict)
    head = _containers(spec["headGroupSpec"])[0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    gpus = []
    for group in spec["workerGroupSpecs"]:
        assert {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams"} <= set(group)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = _containers(group)[0]["resources"]["limits"]
        gpus.append(int(limits["nvidia.com/gpu"]))
    assert min(gpus) == 1 and max(gpus) > 1
    images = {c["image"] for c in [head] + [_containers(g)[0] for g in spec["workerGroupSpecs"]]}
    assert len(images) == 1 and "cutpaste" in images.pop()


def test_rayjob_runs_the_benchmark_entrypoint_that_exists():
    job = _one("RayJob")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == _one("RayCluster")["metadata"]["name"]
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["python", "pipelines/full_benchmark.py"]
    assert (REPO / words[1]).is_file()
    # Every flag it passes is one the benchmark accepts.
    from pipelines.full_benchmark import build_parser

    known = {opt for action in build_parser()._actions for opt in action.option_strings}
    assert {w for w in words if w.startswith("--")} <= known
    args = build_parser().parse_args(words[2:])
    assert args.data.startswith("s3://") and args.storage.startswith("s3://") and args.out.startswith("/")


def test_mlflow_server_uses_postgres_s3_artifact_proxy_and_basic_auth():
    deployment = _one("Deployment", "cutpaste-mlflow")
    container = _containers(deployment["spec"])[0]
    args = container["command"] + container["args"]
    assert args[:2] == ["mlflow", "server"]
    assert "--app-name=basic-auth" in args and "--serve-artifacts" in args
    assert any(a.startswith("--artifacts-destination=s3://") for a in args)
    env = _env(container)
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@")
    for name in ("POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert "secretKeyRef" in env[name]["valueFrom"]
    # Kubernetes only expands $(VAR) for variables defined earlier in the list.
    names = [e["name"] for e in container["env"]]
    assert names.index("POSTGRES_PASSWORD") < names.index("MLFLOW_BACKEND_STORE_URI")
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    service = _one("Service", "cutpaste-mlflow")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    config = _one("ConfigMap", "cutpaste-env")["data"]
    port = service["spec"]["ports"][0]["port"]
    assert config["MLFLOW_TRACKING_URI"] == f"http://{service['metadata']['name']}:{port}"


def test_postgres_statefulset_takes_its_password_from_a_secret():
    postgres = _one("StatefulSet", "cutpaste-postgres")
    env = _env(_containers(postgres["spec"])[0])
    assert "secretKeyRef" in env["POSTGRES_PASSWORD"]["valueFrom"]
    assert postgres["spec"]["volumeClaimTemplates"]


def test_no_credential_is_written_into_a_manifest_and_every_secret_is_documented():
    text = "\n".join(p.read_text() for p in FILES)
    assert not re.search(r"(AKIA|ASIA)[0-9A-Z]{16}|BEGIN [A-Z ]*PRIVATE KEY", text)
    refs = set(re.findall(r"secretKeyRef: \{name: ([\w-]+)", text)) | set(re.findall(r"secretName: ([\w-]+)", text))
    readme = (K8S / "README.md").read_text()
    assert refs and all(f"kubectl create secret generic {name}" in readme for name in refs), refs
    for doc in _all():
        for container in [c for key in ("containers",) for c in _find(doc, key)]:
            for entry in container.get("env", []):
                if re.search(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN", entry["name"]):
                    assert "valueFrom" in entry and "value" not in entry, entry


def _find(node, key):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and isinstance(v, list):
                yield from v
            else:
                yield from _find(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _find(v, key)


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (lambda d: d["spec"]["workerGroupSpecs"][0].pop("maxReplicas"), "workerGroupSpecs[0].maxReplicas: missing"),
        (lambda d: d["spec"]["headGroupSpec"].pop("rayStartParams"), "headGroupSpec.rayStartParams: missing"),
        (lambda d: d["spec"].pop("authOptions"), "RAY_AUTH_MODE=token"),
        (lambda d: d["spec"]["headGroupSpec"].__setitem__("serviceType", "LoadBalancer"), "serviceType"),
        (
            lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(
                {"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"}
            ),
            "secretKeyRef",
        ),
        (lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].pop("image"), "image: missing"),
    ],
    ids=["no-maxReplicas", "no-rayStartParams", "no-auth", "public-head", "inline-secret", "no-image"],
)
def test_validator_names_the_broken_field(patch, expected):
    cluster = yaml.safe_load((K8S / "raycluster.yaml").read_text())
    patch(cluster)
    problems = manifest_problems(cluster)
    assert any(expected in p and p.startswith("RayCluster/cutpaste: ") for p in problems), problems


def test_missing_entrypoint_is_an_error(tmp_path):
    job = yaml.safe_load((K8S / "rayjob.yaml").read_text())
    job["spec"]["entrypoint"] = "python pipelines/no_such_benchmark.py --data s3://b/m"
    path = tmp_path / "rayjob.yaml"
    path.write_text(yaml.safe_dump(job))
    with pytest.raises(InfraConfigError, match=r"pipelines/no_such_benchmark\.py does not exist"):
        validate_manifests(path)
