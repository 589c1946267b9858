"""Chaos benchmark: a benchmark of small runs while a seeded killer SIGKILLs processes of the job at random moments.

    .venv/bin/python bench/chaos.py                     # 5 kinds x 5 faults; bench/results/chaos.{json,md}
    .venv/bin/python bench/chaos.py --kinds training_worker,mlflow_server --faults-per-kind 1 --categories 1

One local stack: a Ray head (``ray start``, its own temp dir), an MLflow server (sqlite, artifacts in S3), and
S3 from moto behind a TCP endpoint process. The data is uploaded to S3; checkpoints go to a local directory.
``pipelines/full_benchmark.py`` is submitted through ``ray job submit`` like a user would, first undisturbed,
then once per fault kind while a killer (``random.Random(seed)``) waits a random 3-15 s (``--gap``), picks a random live
process of that kind and sends it SIGKILL, ``--faults-per-kind`` times:

- ``training_worker``: a ``ray::RayTrainWorker`` (start-up, training, density, evaluation or upload);
- ``train_controller``: a run's ``ray::TrainController``;
- ``status_board``: the driver's ``ray::StatusBoard`` actor;
- ``mlflow_server``: the tracking server's process group; a supervisor starts it again 2 s later;
- ``s3_server``: the S3 endpoint process; started again 2 s later on the same port (S3 keeps the objects).

Per kind it reports faults injected, runs FINISHED, runs retried, runs whose image AUROC equals the
undisturbed run's (within 1e-6) and the seconds lost (wall time minus the undisturbed wall time), and after
the job ended: placement groups not removed and actors of the job still alive (both should be none).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cutpaste.atomic import atomic_write_text
from cutpaste.data.synth import generate_dataset
from cutpaste.storage import upload
from infra.local import tcp_proxy
from infra.local.s3 import moto_s3_server, s3_env
from infra.local.services import (
    VENV_BIN,
    MlflowServer,
    free_port,
    job_status,
    ray_head,
    ray_worker_pids,
    submit_job_no_wait,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "chaos.json"
RAY_TITLES = {
    "training_worker": "ray::RayTrainWorker",
    "train_controller": "ray::TrainController",
    "status_board": "ray::StatusBoard",
}
KINDS = (*RAY_TITLES, "mlflow_server", "s3_server")
BUDGET = {"preset": "ci", "steps": 20, "batch_size": 4, "checkpoint_every": 5, "log_every": 5}
TOLERANCE = 1e-6
# Cluster-wide actors Ray Train starts once and keeps for every later job (not a leak of this one).
SINGLETONS = {"_AutoscalingCoordinatorActor"}
RESTART_DELAY_S = 2.0


@dataclass
class Stack:
    """The services a chaos run kills and brings back, and where everything lives."""

    work: Path
    ray_temp: Path
    head: dict
    mlflow: MlflowServer
    s3_target_port: int
    s3_port: int
    s3_proxy: subprocess.Popen | None = None

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start_s3(self) -> None:
        self.s3_proxy, _ = tcp_proxy.start(self.s3_target_port, port=self.s3_port)

    def kill_s3(self) -> None:
        if self.s3_proxy is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.s3_proxy.pid, signal.SIGKILL)
            self.s3_proxy.wait(timeout=30)


def kill_one(stack: Stack, kind: str, rng: random.Random) -> dict | None:
    """SIGKILLs one process of ``kind`` (None when there is none right now); services come back after 2 s."""
    if kind in RAY_TITLES:
        pids = ray_worker_pids(stack.ray_temp, RAY_TITLES[kind])
        if not pids:
            return None
        pid = rng.choice(pids)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return {"kind": kind, "pid": pid, "at": time.time()}
    if kind == "mlflow_server":
        pid = stack.mlflow.process.pid if stack.mlflow.process else None
        stack.mlflow.stop()
        time.sleep(RESTART_DELAY_S)
        stack.mlflow.start()
    else:
        pid = stack.s3_proxy.pid if stack.s3_proxy else None
        stack.kill_s3()
        time.sleep(RESTART_DELAY_S)
        stack.start_s3()
    return {"kind": kind, "pid": pid, "at": time.time()}


def killer(
    stack: Stack, kind: str, count: int, seed: int, gap: tuple[float, float], done: threading.Event, log: list[dict]
) -> None:
    """Until ``count`` faults were injected or the job ended. Starts once a run trains (the driver's own
    start-up, before any run exists, is not a run's phase)."""
    rng = random.Random(f"{seed}-{kind}")
    low, high = gap
    while not ray_worker_pids(stack.ray_temp, RAY_TITLES["training_worker"]):
        if done.wait(0.2):
            return
    while len(log) < count:
        if done.wait(rng.uniform(low, high)):
            return
        while (fault := kill_one(stack, kind, rng)) is None:
            if done.wait(0.2):
                return
        print(f"chaos: killed {fault['kind']} (pid {fault['pid']})", flush=True)
        log.append(fault)


def benchmark_entrypoint(stack: Stack, benchmark_id: str, categories: list[str], args: argparse.Namespace) -> list:
    config = stack.work / "budget.json"
    config.write_text(json.dumps(BUDGET))
    return [
        str(VENV_BIN / "python"), "pipelines/full_benchmark.py", "--data", "s3://chaos/data",
        "--s3-endpoint", stack.s3_endpoint, "--categories", *categories, "--seeds", str(args.seeds),
        "--config", str(config), "--benchmark-id", benchmark_id, "--mlflow-uri", stack.mlflow.uri,
        "--out", str(stack.work / benchmark_id), "--storage", str(stack.work / "storage" / benchmark_id),
        "--max-failures", str(args.max_failures), "--tracking-timeout", "120",
    ]  # fmt: skip


def run_phase(stack: Stack, kind: str | None, categories: list[str], args: argparse.Namespace) -> dict:
    """One benchmark job (undisturbed when ``kind`` is None); its records, faults and what was left behind."""
    benchmark_id = f"chaos-{kind or 'undisturbed'}"
    started = time.monotonic()
    entrypoint = benchmark_entrypoint(stack, benchmark_id, categories, args)
    submit_job_no_wait(stack.head, entrypoint, benchmark_id, working_dir=REPO)
    done, log = threading.Event(), []
    thread = None
    if kind is not None:
        options = (stack, kind, args.faults_per_kind, args.seed, args.gap, done, log)
        thread = threading.Thread(target=killer, args=options)
        thread.start()
    deadline = time.monotonic() + args.timeout
    while (state := job_status(stack.head, benchmark_id)) in ("RUNNING", "PENDING", "UNKNOWN"):
        if time.monotonic() > deadline:
            break
        time.sleep(2)
    wall = time.monotonic() - started
    done.set()
    if thread is not None:
        thread.join()
    records = _records(stack.work / benchmark_id)
    return {
        "kind": kind or "undisturbed",
        "job": state,
        "wall_s": round(wall, 1),
        "faults": log,
        "records": records,
        "leftovers": leftovers(stack, benchmark_id),
    }


def _records(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    path = out / "results_runs.parquet"
    return pq.read_table(path).to_pylist() if path.is_file() else []


def leftovers(stack: Stack, submission_id: str, wait_s: float = 60.0) -> dict:
    """Placement groups not removed (any job's: the cluster runs only these jobs) and actors of this job still
    alive once it ended, after up to ``wait_s`` for Ray's own cleanup (a detached PlacementGroupCleaner exits
    by itself once its controller is gone)."""
    jobs = {j.get("submission_id"): j.get("job_id") for j in _ray_list(stack, "jobs")}
    job_id = jobs.get(submission_id) or "?"
    deadline = time.monotonic() + wait_s
    while True:
        groups = [g for g in _ray_list(stack, "placement-groups") if g.get("state") != "REMOVED"]
        actors = [
            a
            for a in _ray_list(stack, "actors")
            if a.get("state") != "DEAD" and a.get("job_id") == job_id and a.get("class_name") not in SINGLETONS
        ]
        if (not groups and not actors) or time.monotonic() > deadline:
            return {"placement_groups": len(groups), "actors": sorted({a.get("class_name", "?") for a in actors})}
        time.sleep(2)


def _ray_list(stack: Stack, what: str) -> list[dict]:
    result = subprocess.run(
        [
            str(VENV_BIN / "ray"),
            "list",
            what,
            "--address",
            stack.head["address"],
            "--format",
            "json",
            "--limit",
            "9999",
        ],
        env=stack.head["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        return json.loads(result.stdout)
    except ValueError:
        return []


def summarise(phase: dict, reference: dict) -> dict:
    """A kind's row: faults, runs finished and retried, metrics equal to the undisturbed run, seconds lost."""
    expected = {(r["category"], r["seed"]): r["image_auroc"] for r in reference["records"]}
    finished = [r for r in phase["records"] if r["status"] == "finished"]
    diffs = [
        abs(r["image_auroc"] - expected[(r["category"], r["seed"])])
        for r in finished
        if expected.get((r["category"], r["seed"])) is not None
    ]
    return {
        "kind": phase["kind"],
        "job": phase["job"],
        "faults_injected": len(phase["faults"]),
        "runs": len(reference["records"]),
        "runs_finished": len(finished),
        "runs_retried": sum((r.get("retries") or 0) > 0 for r in phase["records"]),
        "retries": sum(r.get("retries") or 0 for r in phase["records"]),
        "metrics_equal": sum(d <= TOLERANCE for d in diffs),
        "max_image_auroc_diff": max(diffs, default=None),
        "seconds_lost": round(phase["wall_s"] - reference["wall_s"], 1),
        "leaked_placement_groups": phase["leftovers"]["placement_groups"],
        "actors_left": phase["leftovers"]["actors"],
    }


def markdown(rows: list[dict], reference: dict, args: argparse.Namespace) -> str:
    head = "| fault | injected | runs FINISHED | runs retried (retries) | metrics equal | seconds lost | leaked PGs "
    head += "| actors left |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['faults_injected']} | {r['runs_finished']}/{r['runs']} | {r['runs_retried']} "
            f"({r['retries']}) | {r['metrics_equal']}/{r['runs']} | {r['seconds_lost']} | "
            f"{r['leaked_placement_groups']} | {', '.join(r['actors_left']) or 0} |"
        )
    total = sum(r["faults_injected"] for r in rows)
    return "\n".join(lines) + (
        f"\n\n{total} faults in all; undisturbed job {reference['wall_s']} s for {len(reference['records'])} runs "
        f"({args.categories} categories x {args.seeds} seeds, budget {json.dumps(BUDGET)}, --max-failures "
        f"{args.max_failures}); metrics equal = image AUROC within {TOLERANCE:g} of the undisturbed run.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--faults-per-kind", type=int, default=5)
    parser.add_argument("--categories", type=int, default=3, help="synthetic categories (runs = categories x seeds)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--max-failures", type=int, default=5, help="passed to the benchmark")
    parser.add_argument("--seed", type=int, default=0, help="seeds the killer's choices and moments")
    parser.add_argument("--gap", default="3,15", help="seconds between faults: MIN,MAX (uniform)")
    parser.add_argument("--cpus", type=int, default=3, help="logical CPUs of the Ray head (a run takes one)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one job may take")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    try:
        args.gap = tuple(float(x) for x in args.gap.split(","))
        assert len(args.gap) == 2 and 0 <= args.gap[0] <= args.gap[1]
    except (ValueError, AssertionError):
        parser.error(f"--gap: expected MIN,MAX seconds with 0 <= MIN <= MAX, got {args.gap!r}")
    if unknown := sorted(set(kinds) - set(KINDS)):
        parser.error(f"--kinds: unknown {unknown}; choose from {', '.join(KINDS)}")
    with tempfile.TemporaryDirectory(prefix="cutpaste-chaos-") as scratch, moto_s3_server() as moto:
        work = Path(scratch)
        # Ray's socket paths must stay short: its temp dir lives directly under /tmp.
        ray_temp = Path(tempfile.mkdtemp(prefix="chaos-", dir="/tmp"))
        try:
            phases = run_all(work, ray_temp, moto, kinds, args)
        finally:
            shutil.rmtree(ray_temp, ignore_errors=True)
    reference, rows = phases[0], [summarise(p, phases[0]) for p in phases[1:]]
    result = {"reference": {k: v for k, v in reference.items() if k != "faults"}, "kinds": rows, "phases": phases}
    atomic_write_text(json.dumps(result, indent=2, default=str) + "\n", args.out)
    atomic_write_text(markdown(rows, reference, args), args.out.with_suffix(".md"))
    print(markdown(rows, reference, args))
    runs = len(reference["records"])
    ok = all(
        r["runs_finished"] == runs and r["metrics_equal"] == runs and not r["leaked_placement_groups"] for r in rows
    )
    return 0 if ok and reference["job"] == "SUCCEEDED" else 1


def run_all(work: Path, ray_temp: Path, moto: str, kinds: list[str], args: argparse.Namespace) -> list[dict]:
    """Data into S3 (through the killable endpoint), the MLflow server, the Ray head; then the jobs."""
    import boto3

    categories = generate_dataset(work / "data", categories=args.categories, size=64, seed=3, train_count=12)
    stack = Stack(work, ray_temp, {}, None, int(moto.rsplit(":", 1)[1]), free_port())  # type: ignore[arg-type]
    stack.start_s3()
    env = {**s3_env(stack.s3_endpoint), "CUTPASTE_CACHE_DIR": str(work / "cache"), "OMP_NUM_THREADS": "1"}
    # A dead service costs seconds per call, not MLflow's default minutes of retries.
    env.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="0")
    env.update(MLFLOW_HTTP_REQUEST_TIMEOUT="10", AWS_MAX_ATTEMPTS="2")
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket="chaos")
    upload(work / "data", "s3://chaos/data", endpoint_url=stack.s3_endpoint)
    stack.mlflow = MlflowServer(work, env, artifacts="s3://chaos/mlartifacts")
    stack.mlflow.start()
    try:
        with ray_head(work, env={**os.environ, **env}, num_cpus=args.cpus, temp_dir=ray_temp) as head:
            stack.head = head
            phases = [run_phase(stack, None, categories, args)]
            print(json.dumps({k: v for k, v in phases[0].items() if k != "records"}), flush=True)
            for kind in kinds:
                phases.append(run_phase(stack, kind, categories, args))
                print(json.dumps(summarise(phases[-1], phases[0])), flush=True)
    finally:
        stack.mlflow.close()
        stack.kill_s3()
    return phases


if __name__ == "__main__":
    raise SystemExit(main())
