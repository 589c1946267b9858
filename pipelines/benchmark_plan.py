"""The benchmark's plan: its parent MLflow run, every (category, seed) run with its config, and which of them
still need training (a run already finished in MLflow comes back as its record, so an id resumes).

Ray Tune could generate the (category, seed) grid, but a benchmark is not a search: each run is a full
``TorchTrainer`` fit with its own MLflow child found again by name, and resuming is decided by MLflow's
state, not by Tune's experiment directory; the plan is therefore a plain list.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from cutpaste.config import TrainConfig, flatten
from pipelines import datasets, faults, tracking
from pipelines.benchmark_config import (
    PREEMPTION_WATCHER_ENV,
    TAG_MODEL_URI,
    TAG_VALIDATION_DIGEST,
    BenchmarkConfig,
    Session,
)
from pipelines.benchmark_results import finished_record
from pipelines.pyfunc_model import TAG_SHA256
from pipelines.train_run import RunSpec


def open_parent_run(bench: BenchmarkConfig, train_config: TrainConfig) -> tuple[MlflowClient, str, str]:
    """The benchmark's parent run, created or (same benchmark id) resumed, with its params logged.
    Returns (client, experiment id, parent run id)."""
    # Ray Train starts a preemption-watcher actor (one more process, ~2 CPU-s) per run, for observability
    # only; recovery from a lost node is FailureConfig's. Off unless the user turned it on.
    os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")
    mlflow.set_tracking_uri(bench.mlflow_uri)  # the fluent API (model logging) uses it
    # The registry is the tracking server's, named explicitly: a registry URI set globally by other code in
    # the process (MLflow's models:/ downloads read it) must never redirect the champions elsewhere.
    client = MlflowClient(bench.mlflow_uri, registry_uri=bench.mlflow_uri)
    artifact_root = Path(bench.artifact_root) if bench.artifact_root else None
    experiment_id = tracking.ensure_experiment(client, bench.experiment, artifact_root)
    parent_id, created = tracking.find_or_create_run(
        client,
        experiment_id,
        name=bench.benchmark_id,
        tags={tracking.TAG_BENCHMARK: bench.benchmark_id, tracking.TAG_ROLE: "benchmark"},
    )
    if not created:
        print(f"resuming benchmark {bench.benchmark_id} (MLflow run {parent_id})", flush=True)
        client.update_run(parent_id, status="RUNNING")
    tracking.log_params(client, parent_id, benchmark_params(bench, train_config))
    return client, experiment_id, parent_id


def benchmark_params(bench: BenchmarkConfig, train_config: TrainConfig) -> dict[str, Any]:
    """The parent run's params. URIs may carry credentials (http://user:password@host): params keep only
    the redacted form."""
    bench_params = {
        f"benchmark.{k}": tracking.redact_uri(v) if isinstance(v, str) else v for k, v in asdict(bench).items()
    }
    return {**bench_params, **flatten(train_config)}


def plan_runs(bench: BenchmarkConfig, train_config: TrainConfig) -> list[tuple[RunSpec, TrainConfig]]:
    """Every (category, seed) run with its config, in the order they queue: the run names are what a resumed
    benchmark finds its runs by, so they depend only on the benchmark id, category and seed index."""
    plan = []
    for category in bench.categories:
        for seed in range(bench.seeds):
            config = train_config.override({"seed": train_config.seed + seed})
            spec = RunSpec(
                name=bench.run_name(category, seed),
                category=category,
                seed=config.seed,
                data=bench.data,
                train_config=config.to_dict(),
                s3_endpoint=bench.s3_endpoint,
                system_metrics=bench.system_metrics,
                fault=os.environ.get(faults.FAULT_ENV) or None,
            )
            plan.append((spec, config))
    return plan


def run_params(spec: RunSpec, config: TrainConfig) -> dict[str, Any]:
    """A run's params: its whole config, flat, plus what it trained on (so a run can be compared alone)."""
    return {**flatten(config), "category": spec.category, "data": spec.data}


def queue_runs(
    session: Session, plan: list[tuple[RunSpec, TrainConfig]]
) -> tuple[list[dict[str, Any]], list[tuple[RunSpec, str]]]:
    """Finds or creates each run's MLflow child. Runs that finished earlier come back as records (they are
    not trained again); the others come back as the queue of (spec, run id) to start."""
    bench, client, board = session.bench, session.client, session.board
    records: list[dict[str, Any]] = []
    queue: list[tuple[RunSpec, str]] = []
    inputs: dict[str, list] = {}  # per category: its seeds saw the same files
    for spec, config in plan:
        tags = {tracking.TAG_BENCHMARK: bench.benchmark_id, tracking.TAG_RUN_KEY: spec.name, tracking.TAG_ROLE: "run"}
        run_id, _ = tracking.find_or_create_run(
            client, session.experiment_id, name=spec.name, tags=tags, parent_run_id=session.parent_id
        )
        done = record_from_mlflow(client, run_id, spec)
        if done is not None:
            detail = f"finished earlier, image AUROC {100 * done['image_auroc']:.1f}"
            board.update(spec.name, "skipped", detail=detail)
            records.append(done)
            continue
        tracking.log_params(client, run_id, run_params(spec, config))
        _log_run_datasets(session, spec, run_id, inputs)
        client.update_run(run_id, status="RUNNING")
        board.update(spec.name, "queued")
        session.buffers[spec.name] = tracking.MetricBuffer(bench.mlflow_uri, run_id)
        queue.append((spec, run_id))
    return records, queue


def _log_run_datasets(session: Session, spec: RunSpec, run_id: str, inputs: dict[str, list]) -> None:
    """The run's training and test files as MLflow datasets; a listing problem is reported, not fatal."""
    try:
        if spec.category not in inputs:
            inputs[spec.category] = datasets.dataset_inputs(spec.data, spec.category, endpoint_url=spec.s3_endpoint)
        datasets.log_datasets(session.client, run_id, inputs[spec.category])
    except Exception as exc:
        print(f"{spec.name}: could not log its datasets ({faults.describe(exc)})", flush=True)


def record_from_mlflow(client: MlflowClient, run_id: str, spec: RunSpec) -> dict[str, Any] | None:
    """The record of a run that finished in an earlier attempt of this benchmark, from its MLflow run; None
    when it has yet to finish (it did not, or its model was never logged)."""
    run = client.get_run(run_id)
    if run.info.status != "FINISHED" or "image_auroc" not in run.data.metrics or TAG_MODEL_URI not in run.data.tags:
        return None
    record = finished_record(spec, run.data.metrics)
    record.update(mlflow_run_id=run_id, model_uri=run.data.tags[TAG_MODEL_URI], skipped=True)
    tags = run.data.tags
    record.update(sha256=tags.get(TAG_SHA256), retries=int(tags.get("cutpaste.retries", 0)))
    record["faults"] = tags.get("cutpaste.faults", "")
    record["validation_digest"] = tags.get(TAG_VALIDATION_DIGEST, "")
    record.update({k: run.data.metrics.get(k) for k in ("threshold", "expected_fpr")})
    return record
