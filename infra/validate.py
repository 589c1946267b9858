"""Checks for the cluster files: ``ray_cluster.yaml`` and the Kubernetes manifests in ``infra/k8s/``.

    python infra/validate.py ray_cluster.yaml infra/k8s/*.yaml      # exit 0, or 2 with one line per problem

A Ray cluster config is validated against the JSON schema inside the installed ray package
(``ray/autoscaler/ray-schema.json``, the one ``ray up`` uses) and then against this project's rules:

- ``docker.run_options`` sets the environment every node needs: ``MLFLOW_TRACKING_URI`` (an http(s) tracking
  server: the driver may run on any node and a sqlite file on one node is not shared) and
  ``AWS_DEFAULT_REGION`` (boto3 and pyarrow reach the data and ``s3://`` checkpoints with it; credentials come
  from the instance profile);
- ``RAY_AUTH_MODE=token`` (Ray's token auth stays on; ``disabled`` is refused);
- the head's dashboard listens on loopback only (reach it with ``ray dashboard``);
- at least one GPU worker type, a pinned image, and no credential written into the file.

Kubernetes manifests are checked for what the API server and the KubeRay operator require (apiVersion,
kind, metadata.name, container images, rayStartParams, head and worker groups), for Ray token auth
(``authOptions.mode: token`` or ``RAY_AUTH_MODE=token`` in every Ray container), for Services that stay
ClusterIP, for entrypoint scripts that exist in this repository, and for credentials: a secret value is only
ever a ``secretKeyRef`` (or a ``$(VAR)`` expanded from one).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cutpaste.errors import CutPasteError

ROOT = Path(__file__).resolve().parents[1]  # the repository: entrypoints name its scripts

REQUIRED_ENV = {
    "MLFLOW_TRACKING_URI": "the MLflow tracking server the benchmark driver logs to",
    "AWS_DEFAULT_REGION": "the region of the S3 bucket holding the data and the checkpoints",
}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_SECRET_NAME = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)", re.IGNORECASE)
_SECRET_VALUE = re.compile(
    r"\b(AKIA|ASIA)[0-9A-Z]{16}\b|-----BEGIN [A-Z ]*PRIVATE KEY-----|postgres(ql)?://[^:/\s]+:(?!\$\()[^@\s]+@"
)
_NOT_SECRET_NAMES = {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"}


class InfraConfigError(CutPasteError):
    """A cluster config or manifest is invalid; the message names the file and the field."""


def load_yaml_documents(path: Path) -> list[Any]:
    import yaml

    try:
        return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    except OSError as exc:
        raise InfraConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise InfraConfigError(f"{path}: not valid YAML: {exc}") from None


def ray_schema() -> dict[str, Any]:
    """The cluster launcher's JSON schema (draft-07) as shipped with the installed ray."""
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


# ----------------------------------------------------------------------------------- Ray cluster launcher


def docker_env(config: dict[str, Any]) -> dict[str, str]:
    """The ``--env KEY=VALUE`` (or ``-e``) settings in ``docker.run_options``."""
    env: dict[str, str] = {}
    for option in (config.get("docker") or {}).get("run_options") or []:
        try:
            words = shlex.split(str(option))
        except ValueError:  # unbalanced quotes: docker would refuse it too; read it word by word
            words = str(option).split()
        for i, word in enumerate(words):
            item = None
            if word in ("--env", "-e") and i + 1 < len(words):
                item = words[i + 1]
            elif word.startswith("--env="):
                item = word.removeprefix("--env=")
            if item and "=" in item:
                key, value = item.split("=", 1)
                env[key] = value
    return env


def cluster_config_problems(config: Any) -> list[str]:
    """Every problem of a Ray cluster launcher config, each naming its field."""
    import jsonschema

    if not isinstance(config, dict):
        return ["the file must be a mapping (a Ray cluster launcher config)"]
    problems = [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(top level)'}: {error.message}"
        for error in sorted(
            jsonschema.Draft7Validator(ray_schema()).iter_errors(config), key=lambda e: list(e.absolute_path)
        )
    ]
    env = docker_env(config)
    for key, meaning in REQUIRED_ENV.items():
        if not env.get(key):
            problems.append(f"docker.run_options: no '--env {key}=...' ({meaning})")
    uri = env.get("MLFLOW_TRACKING_URI", "")
    if uri and not re.match(r"https?://", uri):
        problems.append(
            f"docker.run_options: MLFLOW_TRACKING_URI={uri} is not an http(s) tracking server; "
            "every node must reach the same store"
        )
    if env.get("RAY_AUTH_MODE") != "token":
        problems.append("docker.run_options: '--env RAY_AUTH_MODE=token' is required (Ray token auth stays on)")
    problems += _dashboard_problems(config)
    problems += _node_type_problems(config)
    image = str((config.get("docker") or {}).get("image", ""))
    if not image or image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]:
        problems.append(f"docker.image: {image or '(missing)'} must name a pinned tag of the project image")
    problems += [f"{where}: {what}" for where, what in secret_findings(config)]
    return problems


def _dashboard_problems(config: dict[str, Any]) -> list[str]:
    problems = []
    for i, command in enumerate(config.get("head_start_ray_commands") or []):
        for host in re.findall(r"--dashboard-host[= ](\S+)", str(command)):
            if host not in LOOPBACK:
                problems.append(
                    f"head_start_ray_commands[{i}]: --dashboard-host={host} exposes the dashboard and Jobs API; "
                    "use 127.0.0.1 and `ray dashboard ray_cluster.yaml`"
                )
    return problems


def _node_type_problems(config: dict[str, Any]) -> list[str]:
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    problems = []
    if head not in types:
        problems.append(f"head_node_type: {head!r} is not one of available_node_types ({', '.join(types)})")
    gpu_types = [name for name, spec in types.items() if name != head and _resources(spec).get("GPU")]
    if not gpu_types:
        problems.append("available_node_types: no worker type with resources.GPU")
    for name, spec in types.items():
        if not isinstance(spec, dict):
            continue  # the schema already reported it
        low, high = spec.get("min_workers", 0), spec.get("max_workers", 0)
        if isinstance(low, int) and isinstance(high, int) and low > high:
            problems.append(f"available_node_types.{name}: min_workers {low} > max_workers {high}")
    return problems


def _resources(spec: Any) -> dict[str, Any]:
    resources = spec.get("resources") if isinstance(spec, dict) else None
    return resources if isinstance(resources, dict) else {}


def validate_cluster_config(path: str | Path) -> dict[str, Any]:
    """The parsed config of ``path``; raises ``InfraConfigError`` listing every problem."""
    path = Path(path)
    documents = load_yaml_documents(path)
    if len(documents) != 1:
        raise InfraConfigError(f"{path}: expected one YAML document, found {len(documents)}")
    problems = cluster_config_problems(documents[0])
    if problems:
        raise InfraConfigError(f"{path}: " + f"\n{path}: ".join(problems))
    return documents[0]


# ---------------------------------------------------------------------------------------------- secrets


def _walk(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    yield where, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{where}[{i}]")


def secret_findings(document: Any) -> list[tuple[str, str]]:
    """(field, why) for every credential written into ``document`` instead of referenced."""
    findings = []
    for where, node in _walk(document):
        if isinstance(node, str) and _SECRET_VALUE.search(node):
            findings.append((where, "holds a credential (access key, private key or password in a URI)"))
        if isinstance(node, dict):
            # Kubernetes env entries: {name: X_PASSWORD, value: "..."} must use valueFrom.secretKeyRef instead.
            name = node.get("name")
            if isinstance(name, str) and "value" in node and _is_secret_name(name) and node["value"]:
                findings.append((where, f"env {name} has an inline value; use valueFrom.secretKeyRef"))
            # Kubernetes Secrets with data: only placeholders belong in the repository.
            if node.get("kind") == "Secret" and (node.get("data") or node.get("stringData")):
                findings.append((where, "a Secret with data; create it with kubectl, keep only references here"))
        if isinstance(node, str):
            for key, value in _env_assignments(node):
                if _is_secret_name(key) and value and not value.startswith("$"):
                    findings.append((where, f"sets {key} inline"))
    return findings


def _is_secret_name(name: str) -> bool:
    return name not in _NOT_SECRET_NAMES and bool(_SECRET_NAME.search(name))


def _env_assignments(text: str) -> Iterable[tuple[str, str]]:
    for match in re.finditer(r"\b([A-Z][A-Z0-9_]*)=(\S*)", text):
        yield match.group(1), match.group(2)


# ------------------------------------------------------------------------------------------- Kubernetes

KUBERAY_KINDS = {"RayCluster", "RayJob"}


def manifest_problems(document: Any, repo: Path = ROOT) -> list[str]:
    """Problems of one Kubernetes manifest, each naming its field."""
    if not isinstance(document, dict):
        return ["a manifest must be a mapping"]
    problems = [f"{key}: missing" for key in ("apiVersion", "kind") if not document.get(key)]
    name = (document.get("metadata") or {}).get("name")
    if not name:
        problems.append("metadata.name: missing")
    kind = document.get("kind")
    where = f"{kind}/{name}"
    for path, container in _containers(document):
        if not container.get("image"):
            problems.append(f"{path}.image: missing")
        if not container.get("name"):
            problems.append(f"{path}.name: missing")
    if kind in KUBERAY_KINDS and not str(document.get("apiVersion", "")).startswith("ray.io/"):
        problems.append(f"apiVersion: {document.get('apiVersion')} is not ray.io/v1")
    if kind == "RayCluster":
        problems += _ray_cluster_spec_problems(document.get("spec") or {}, "spec")
    elif kind == "RayJob":
        spec = document.get("spec") or {}
        if not spec.get("entrypoint"):
            problems.append("spec.entrypoint: missing")
        problems += [f"spec.entrypoint: {p}" for p in entrypoint_problems(str(spec.get("entrypoint", "")), repo)]
        if "rayClusterSpec" in spec:
            problems += _ray_cluster_spec_problems(spec["rayClusterSpec"] or {}, "spec.rayClusterSpec")
        elif not spec.get("clusterSelector"):
            problems.append("spec: needs rayClusterSpec or clusterSelector")
    elif kind == "Service" and (document.get("spec") or {}).get("type", "ClusterIP") != "ClusterIP":
        problems.append(f"spec.type: {document['spec']['type']} publishes the service; use ClusterIP and port-forward")
    problems += [f"{field}: {why}" for field, why in secret_findings(document)]
    return [f"{where}: {p}" for p in problems]


def _ray_cluster_spec_problems(spec: dict[str, Any], at: str) -> list[str]:
    problems = []
    head = spec.get("headGroupSpec")
    if not isinstance(head, dict):
        return [f"{at}.headGroupSpec: missing"]
    if not isinstance(head.get("rayStartParams"), dict):
        problems.append(f"{at}.headGroupSpec.rayStartParams: missing (may be {{}})")
    # In a pod the dashboard listens on the pod network (KubeRay's submitter and probes reach it there);
    # what must not happen is a head Service that publishes it outside the cluster.
    if head.get("serviceType", "ClusterIP") != "ClusterIP":
        problems.append(f"{at}.headGroupSpec.serviceType: {head['serviceType']} publishes the dashboard; use ClusterIP")
    groups = spec.get("workerGroupSpecs")
    if not groups:
        problems.append(f"{at}.workerGroupSpecs: missing")
    for i, group in enumerate(groups or []):
        for key in ("groupName", "replicas", "minReplicas", "maxReplicas"):
            if key not in group:
                problems.append(f"{at}.workerGroupSpecs[{i}].{key}: missing")
        if not isinstance(group.get("rayStartParams"), dict):
            problems.append(f"{at}.workerGroupSpecs[{i}].rayStartParams: missing (may be {{}})")
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 0)
        if isinstance(low, int) and isinstance(high, int) and not low <= group.get("replicas", low) <= high:
            problems.append(f"{at}.workerGroupSpecs[{i}]: needs minReplicas <= replicas <= maxReplicas")
    if (spec.get("authOptions") or {}).get("mode") != "token":
        # Without the operator's authOptions, every Ray container must set token mode itself.
        for path, container in _containers(spec):
            env = {e.get("name"): e for e in container.get("env") or []}
            if (env.get("RAY_AUTH_MODE") or {}).get("value") != "token":
                problems.append(f"{at}.{path}.env: RAY_AUTH_MODE=token or {at}.authOptions.mode=token is required")
    return problems


def _containers(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for path, value in _walk(node, where):
        if path.endswith(("containers", "initContainers")) and isinstance(value, list):
            for i, container in enumerate(value):
                if isinstance(container, dict):
                    yield f"{path}[{i}]", container


def entrypoint_problems(entrypoint: str, repo: Path = ROOT) -> list[str]:
    """The repository scripts an entrypoint names (``*.py``/``*.sh`` relative paths) that do not exist."""
    return [
        f"{word} does not exist in the repository"
        for word in shlex.split(entrypoint)
        if word.endswith((".py", ".sh")) and not word.startswith("/") and not (repo / word).is_file()
    ]


def validate_manifests(path: str | Path, repo: Path = ROOT) -> list[dict[str, Any]]:
    """The manifests of ``path``; raises ``InfraConfigError`` listing every problem."""
    path = Path(path)
    documents = load_yaml_documents(path)
    problems = [p for doc in documents for p in manifest_problems(doc, repo)]
    if problems:
        raise InfraConfigError(f"{path}: " + f"\n{path}: ".join(problems))
    return documents


def validate_file(path: str | Path) -> str:
    """Validates a Ray cluster config or a file of Kubernetes manifests (told apart by ``kind``)."""
    documents = load_yaml_documents(Path(path))
    if documents and all(isinstance(d, dict) and "kind" in d for d in documents):
        return f"{path}: {len(validate_manifests(path))} Kubernetes manifests ok"
    validate_cluster_config(path)
    return f"{path}: Ray cluster config ok"


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python infra/validate.py FILE.yaml [FILE.yaml ...]", file=sys.stderr)
        return 2
    status = 0
    for path in paths:
        try:
            print(validate_file(path))
        except InfraConfigError as exc:
            print(f"validate: error: {exc}", file=sys.stderr)
            status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())
