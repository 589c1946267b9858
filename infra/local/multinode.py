"""Local multi-node rehearsal: a Ray head and a second Ray node on this machine, the benchmark submitted
as a Ray job, data and checkpoints in S3 (moto on loopback unless --s3-endpoint names another server).

    .venv/bin/python infra/local/multinode.py                       # moto, 2 synthetic categories, ci preset
    .venv/bin/python infra/local/multinode.py --s3-endpoint http://127.0.0.1:9000 --bucket rehearsal

Each node gets its own Ray temp dir (so its own copy of the job's working directory) and its own data
cache (``CUTPASTE_CACHE_DIR``), as two machines would; the only things they share are the S3 bucket
(data in, checkpoints via ``--storage s3://...``) and the driver's MLflow store. Each node offers one CPU
and a run's training worker needs one, so two runs at once land on the two nodes; the report says which
node ran which run (Ray's state API) and what each node's cache holds.

The nodes are started with ``ray start --block`` and stopped by signalling their process group, so a
rehearsal never stops other Ray instances on the machine (``ray stop`` would stop them all).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.local.services import VENV_BIN, free_port, submit_job, wait_http

ROOT = Path(__file__).resolve().parents[2]  # shipped to the rehearsal cluster as the job's working dir

NODE_RESOURCE = "rehearsal_node"  # custom resource naming each node, so the report can tell them apart
TRAIN_WORKER_CLASS = "RayTrainWorker"


@dataclass
class RayNode:
    """One ``ray start --block`` process and the directories that belong to that node alone."""

    name: str
    temp_dir: Path
    cache_dir: Path
    process: subprocess.Popen
    log: Path


@dataclass
class RehearsalReport:
    """What the rehearsal saw: job outcome, where runs trained, what each node cached, what S3 holds."""

    status: str
    logs: str
    node_ids: dict[str, str] = field(default_factory=dict)  # node name -> Ray node id
    run_nodes: dict[str, str] = field(default_factory=dict)  # Ray Train worker actor id -> node name
    cached_categories: dict[str, list[str]] = field(default_factory=dict)  # node name -> categories in its cache
    working_dirs: dict[str, list[Path]] = field(default_factory=dict)  # node name -> its copies of the job's dir
    checkpoint_keys: list[str] = field(default_factory=list)
    out: Path | None = None

    def summary(self) -> dict:
        return {
            "status": self.status,
            "node_ids": self.node_ids,
            "runs_per_node": {n: sum(v == n for v in self.run_nodes.values()) for n in self.node_ids},
            "cached_categories": self.cached_categories,
            "job_working_dirs": {n: [str(p) for p in v] for n, v in self.working_dirs.items()},
            "checkpoint_objects": len(self.checkpoint_keys),
            "results": str(self.out / "results.md") if self.out else None,
        }


def _start_node(name: str, work: Path, env: dict[str, str], args: list[str]) -> RayNode:
    node_dir = work / name
    temp_dir, cache_dir = node_dir / "ray", node_dir / "cache"
    temp_dir.mkdir(parents=True)
    cache_dir.mkdir(parents=True)
    log = node_dir / "ray-start.log"
    process = subprocess.Popen(
        [
            str(VENV_BIN / "ray"),
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={temp_dir}",
            "--num-gpus=0",
            "--object-store-memory=100000000",
            "--disable-usage-stats",
            f"--resources={json.dumps({f'{NODE_RESOURCE}_{name}': 1})}",
            # Two nodes on one machine (and other Ray instances on it) must not fight over the fixed defaults.
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            *args,
        ],
        env={**env, "CUTPASTE_CACHE_DIR": str(cache_dir)},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return RayNode(name, temp_dir, cache_dir, process, log)


def _stop_nodes(nodes: list[RayNode], grace_s: float = 10.0) -> None:
    """SIGTERM makes each `ray start --block` stop what it started; whatever is left after ``grace_s`` is killed."""
    for node in nodes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for node in nodes:
        try:
            node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait(timeout=10)
        _kill_leftovers(node.temp_dir)


def _kill_leftovers(temp_dir: Path) -> None:
    """Ray processes of this node that left the process group (they name the node's temp dir)."""
    marker = str(temp_dir)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(proc.name), signal.SIGKILL)


def _ray_state(kind: str, address: str, env: dict[str, str], *filters: str) -> list[dict]:
    """``ray list <kind>`` as JSON (the CLI carries the auth token; no driver is started here)."""
    command = [str(VENV_BIN / "ray"), "list", kind, "--address", address, "--format", "json", "--detail"]
    for item in filters:
        command += ["--filter", item]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=True)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"`ray list {kind}` printed no JSON: {(result.stdout + result.stderr)[-2000:]}") from None


def _wait_for_nodes(address: str, env: dict[str, str], names: list[str], timeout_s: float) -> dict[str, str]:
    """Node name -> node id once every node is alive in the cluster."""
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while True:
        found: dict[str, str] = {}
        try:
            for node in _ray_state("nodes", address, env, "state=ALIVE"):
                for name in names:
                    if f"{NODE_RESOURCE}_{name}" in node.get("resources_total", {}):
                        found[name] = node["node_id"]
        except subprocess.CalledProcessError as exc:
            last_error = f"`ray list nodes` exited {exc.returncode}: {(exc.stdout or '') + (exc.stderr or '')}"
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            last_error = str(exc)
        if len(found) == len(names):
            return found
        if time.monotonic() > deadline:
            missing = sorted(set(names) - set(found))
            raise TimeoutError(
                f"Ray nodes {missing} did not join within {timeout_s:.0f}s; last error: {last_error[-2000:] or 'none'}"
            )
        time.sleep(1.0)


@contextlib.contextmanager
def two_node_cluster(work: Path, env: dict[str, str], *, timeout_s: float = 120) -> Iterator[dict]:
    """A head (``a``) and a second node (``b``) with one CPU each; yields what ``submit_job`` needs."""
    gcs_port, dashboard_port = free_port(), free_port()
    # Token authentication stays on (the default since Ray 2.59): start and submit agree on it.
    env = {**env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    nodes: list[RayNode] = []
    try:
        nodes.append(
            _start_node(
                "a",
                work,
                env,
                [
                    "--head",
                    f"--port={gcs_port}",
                    "--num-cpus=1",
                    "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard_port}",
                    f"--ray-client-server-port={free_port()}",
                ],
            )
        )
        address = f"http://127.0.0.1:{dashboard_port}"
        wait_http(f"{address}/api/version", timeout_s, nodes[0].process, any_status=True)
        nodes.append(_start_node("b", work, env, [f"--address=127.0.0.1:{gcs_port}", "--num-cpus=1"]))
        try:
            node_ids = _wait_for_nodes(address, env, ["a", "b"], timeout_s)
        except TimeoutError as exc:
            tails = "".join(f"\n--- {n.log} ---\n{n.log.read_text(errors='replace')[-1500:]}" for n in nodes)
            raise TimeoutError(f"{exc}{tails}") from None
        yield {"address": address, "env": env, "nodes": {n.name: n for n in nodes}, "node_ids": node_ids}
    finally:
        _stop_nodes(nodes)


def _submit(cluster: dict, entrypoint: list[str], timeout_s: float) -> tuple[str, str]:
    """``submit_job``, retried while the head's job agent has not registered yet (a busy machine)."""
    deadline = time.monotonic() + 120
    while True:
        status, logs = submit_job(cluster, entrypoint, working_dir=ROOT, timeout_s=timeout_s)
        if "No available agent to submit job" not in logs or time.monotonic() > deadline:
            return status, logs
        time.sleep(2.0)


def _cached_categories(cache_dir: Path) -> list[str]:
    """Categories this node's cache has published views of (``views/<dataset>/<category>`` links)."""
    views = cache_dir / "views"
    if not views.is_dir():
        return []
    return sorted({link.name for root in views.iterdir() for link in root.iterdir() if link.is_symlink()})


def _job_working_dirs(temp_dir: Path) -> list[Path]:
    """The node's own unpacked copies of the job's ``--working-dir`` (Ray keeps them per node session)."""
    return sorted(p for p in temp_dir.glob("session_2*/runtime_resources/working_dir_files/*") if p.is_dir())


def _steps_config(work: Path, preset: str, steps: int) -> Path:
    """A config difference that shortens the preset (checkpoints still reach S3 every few steps)."""
    path = work / "config.json"
    path.write_text(json.dumps({"preset": preset, "steps": steps, "checkpoint_every": max(1, steps // 3)}))
    return path


def rehearse(
    work: Path,
    *,
    s3_endpoint: str,
    bucket: str,
    categories: int = 2,
    size: int = 64,
    preset: str = "ci",
    steps: int | None = None,
    mlflow_uri: str | None = None,
    timeout_s: float = 600,
) -> RehearsalReport:
    """Upload synthetic data, start two nodes, submit the benchmark, and report where everything went.

    ``s3_endpoint`` must already serve ``bucket`` (or let it be created); AWS credentials come from the
    environment, as on a real cluster.
    """
    started = time.monotonic()
    s3, names = _upload_synthetic(work, s3_endpoint, bucket, categories=categories, size=size)
    data_uri, storage_uri = f"s3://{bucket}/mvtec", f"s3://{bucket}/checkpoints"
    print(f"data ready after {time.monotonic() - started:.1f}s", flush=True)

    # What ray_cluster.yaml puts in every node's environment: the bucket, the endpoint, the tracking server.
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": s3_endpoint,
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "MLFLOW_TRACKING_URI": mlflow_uri or f"sqlite:///{work / 'mlflow.db'}",
    }
    out = work / "out"
    extra = ["--config", str(_steps_config(work, preset, steps))] if steps else []
    entrypoint = _benchmark_entrypoint(data_uri, storage_uri, names, preset, out, extra)
    with two_node_cluster(work, env) as cluster:
        print(f"two nodes up after {time.monotonic() - started:.1f}s", flush=True)
        status, logs = _submit(cluster, entrypoint, timeout_s)
        (work / "job.log").write_text(logs)
        report = _report(cluster, status, logs, out)
    listing = s3.list_objects_v2(Bucket=bucket, Prefix="checkpoints/")
    report.checkpoint_keys = [item["Key"] for item in listing.get("Contents", [])]
    return report


def _upload_synthetic(work: Path, s3_endpoint: str, bucket: str, *, categories: int, size: int) -> tuple[Any, list]:
    """Synthetic categories written under ``work/data`` and uploaded to ``s3://bucket/mvtec`` (the bucket is
    created when absent); returns the S3 client and the category names."""
    import boto3

    from cutpaste.data.synth import generate_dataset
    from cutpaste.storage import upload

    names = generate_dataset(work / "data", categories=categories, size=size, seed=7, train_count=24, test_good=6)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        s3.create_bucket(Bucket=bucket)
    upload(work / "data", f"s3://{bucket}/mvtec", endpoint_url=s3_endpoint)
    return s3, names


def _benchmark_entrypoint(
    data_uri: str, storage_uri: str, names: list, preset: str, out: Path, extra: list[str]
) -> list[str]:
    """The job's command line. No --mlflow-uri: the driver takes MLFLOW_TRACKING_URI from the head node's
    environment, as on a cluster."""
    return [
        str(VENV_BIN / "python"),
        "pipelines/full_benchmark.py",
        "--data",
        data_uri,
        "--categories",
        *names,
        "--preset",
        preset,
        *extra,
        "--benchmark-id",
        "rehearsal",
        "--out",
        str(out),
        "--storage",
        storage_uri,
        "--no-register",
    ]


def _report(cluster: dict, status: str, logs: str, out: Path) -> RehearsalReport:
    """Where the job's training workers ran, what each node cached and unpacked, while the nodes are up."""
    workers = _ray_state("actors", cluster["address"], cluster["env"], f"class_name={TRAIN_WORKER_CLASS}")
    by_id = {v: k for k, v in cluster["node_ids"].items()}
    return RehearsalReport(
        status=status,
        logs=logs,
        node_ids=cluster["node_ids"],
        run_nodes={w["actor_id"]: by_id.get(w["node_id"], w["node_id"]) for w in workers},
        cached_categories={n.name: _cached_categories(n.cache_dir) for n in cluster["nodes"].values()},
        working_dirs={n.name: _job_working_dirs(n.temp_dir) for n in cluster["nodes"].values()},
        out=out,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint (default: start moto on loopback)")
    parser.add_argument("--bucket", default="cutpaste-rehearsal")
    parser.add_argument("--categories", type=int, default=2, help="synthetic categories (one run each)")
    parser.add_argument("--preset", default="ci")
    parser.add_argument("--steps", type=int, help="training steps per run (default: the preset's)")
    parser.add_argument("--mlflow-uri", help="default: a sqlite store in the work directory")
    parser.add_argument("--work", help="work directory (default: a fresh one under /tmp, removed afterwards)")
    args = parser.parse_args(argv)
    # Short paths: Ray's unix sockets live under each node's temp dir and must stay under 108 characters.
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="cp-multinode-", dir="/tmp"))
    with contextlib.ExitStack() as stack:
        endpoint = args.s3_endpoint
        if endpoint is None:
            if importlib.util.find_spec("moto") is None:
                print("multinode: error: --s3-endpoint not given and moto is not installed", file=sys.stderr)
                return 2
            from infra.local.s3 import FAKE_CREDENTIALS, moto_s3_server

            endpoint = stack.enter_context(moto_s3_server())
            os.environ.update({**FAKE_CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1"})
        report = rehearse(
            work,
            s3_endpoint=endpoint,
            bucket=args.bucket,
            categories=args.categories,
            preset=args.preset,
            steps=args.steps,
            mlflow_uri=args.mlflow_uri,
        )
    print(report.logs[-3000:])
    print(json.dumps(report.summary(), indent=2))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
        print(f"removed {work} (pass --work DIR to keep the results, logs and caches)")
    spread = len(set(report.run_nodes.values())) == 2
    return 0 if report.status == "SUCCEEDED" and spread else 1


if __name__ == "__main__":
    sys.exit(main())
