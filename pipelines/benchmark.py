"""The benchmark driver: one Ray Train run per (category, seed), tracked in MLflow, summarised as a table.

Each run's ``TorchTrainer.fit()`` is called from a thread of the driver (Ray Train supports that), as
many at once as the cluster has room for plus one waiting, so a run needs no process of its own beyond
Ray Train's controller and workers. A benchmark id names everything it writes (Ray run names, MLflow
runs, results), so running the same id again skips finished runs and resumes unfinished ones from their
checkpoints.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import ray
from mlflow import MlflowClient
from ray.autoscaler.sdk import request_resources

from cutpaste.atomic import atomic_write_text
from cutpaste.config import TrainConfig, flatten
from cutpaste.density import GaussianDensity
from cutpaste.detector import BUNDLE_NAME, verify_bundle
from cutpaste.errors import CutPasteError
from cutpaste.integrity import load_weights
from cutpaste.report import RunRecord, summarise, to_markdown, write_results
from pipelines import datasets, descriptions, faults, figures, placement, tracking
from pipelines.pyfunc_model import TAG_SHA256, log_detector_model
from pipelines.status import Announcer, StatusBoard, StatusPrinter
from pipelines.train_run import HEATMAPS_NAME, RunSpec, build_trainer, fetch_result_files

T = TypeVar("T")
EXPERIMENT = "cutpaste-benchmark"
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
TAG_MODEL_URI = "cutpaste.model_uri"
# SHA-256 of the validation anomalies a run's val_auroc was read on (equal across the seeds of a category).
TAG_VALIDATION_DIGEST = "cutpaste.validation_digest"


class BenchmarkError(CutPasteError):
    """The benchmark cannot start: bad flags, unknown categories, missing resources."""


_DRIVER_START = time.monotonic()  # the driver's wall time, for driver.json


@dataclass(frozen=True)
class BenchmarkConfig:
    """Where and how a benchmark runs. No credentials: those come from the environment."""

    benchmark_id: str
    data: str
    categories: tuple[str, ...]
    seeds: int
    mlflow_uri: str
    out: str
    storage: str
    experiment: str = EXPERIMENT
    gpus_per_run: float = 0.0
    workers_per_run: int = 1
    cpus_per_worker: float = 1.0
    max_failures: int = 1
    # How long a finished run's logging waits for an unreachable MLflow before the run counts as failed.
    tracking_timeout_s: float = 120.0
    s3_endpoint: str | None = None
    register_models: bool = True
    artifact_root: str | None = None
    # Each run's CPU, memory and GPU use at every logged step (pipelines/system_metrics.py).
    system_metrics: bool = False

    @property
    def gpus_per_worker(self) -> float:
        return self.gpus_per_run / self.workers_per_run

    def run_name(self, category: str, seed: int) -> str:
        return f"{self.benchmark_id}-{category}-seed{seed}"


def execute_run(spec: RunSpec, bench: BenchmarkConfig, board: Any) -> dict[str, Any]:
    """Trains and evaluates one run on Ray Train (called in a driver thread). Never raises: a failure comes
    back as a reason, and whether it was an infrastructure fault (a retry may succeed) or not.

    Ray Train itself retries nothing here (``max_failures=0``): it would retry any worker error, bad data
    included, and not a lost controller. The driver retries instead (:func:`_finish`), for infrastructure
    faults only, with the cause of each retry known and counted. (Ray still retries a worker group that
    failed to start, which it does without limit by default.)

    It does not touch MLflow: the driver's main thread is the only writer, which keeps a sqlite store
    consistent and puts tracking outages in one place.
    """
    try:
        trainer = build_trainer(
            spec,
            storage_path=bench.storage,
            workers=bench.workers_per_run,
            gpus_per_worker=bench.gpus_per_worker,
            cpus_per_worker=bench.cpus_per_worker,
            max_failures=0,
            status_board=board,
        )
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        return {"status": "finished", "checkpoint": result.checkpoint, "metrics": dict(result.metrics or {})}
    except Exception as exc:
        return {"status": "failed", "error": faults.describe(exc), "retryable": faults.is_infrastructure_fault(exc)}


def _start_run(spec: RunSpec, bench: BenchmarkConfig, board: Any) -> Future:
    """``execute_run`` in a daemon thread: Ctrl-C or ``ray job stop`` ends the driver at once (Ray then
    stops the runs' controllers and workers, which the driver owns) instead of waiting for every fit()."""
    future: Future = Future()

    def target() -> None:
        try:
            future.set_result(execute_run(spec, bench, board))
        except BaseException as exc:  # never lose a thread's end: the driver waits on this future
            future.set_exception(exc)

    threading.Thread(target=target, name=f"cutpaste-{spec.name}", daemon=True).start()
    return future


def _log_finished_run(
    client: MlflowClient,
    spec: RunSpec,
    run_id: str,
    files: Path,
    bench: BenchmarkConfig,
    phases: dict[str, float] | None = None,
) -> dict[str, Any]:
    import torch

    evaluation = json.loads((files / "evaluation.json").read_text())
    # The bundle came back through checkpoint storage: checked against its digest record, read as data.
    verify_bundle(files / BUNDLE_NAME)
    bundle = load_weights(files / BUNDLE_NAME, kind="bundle")
    density = GaussianDensity.from_state_dict(bundle["density"])
    final = _final_metrics(evaluation, bundle, density, phases)
    log = tracking.MetricBuffer(bench.mlflow_uri, run_id)
    log.log(final, step=int(bundle["meta"].get("steps", 0)))
    log.close()
    with tempfile.TemporaryDirectory() as tmp:
        density_path = Path(tmp) / "density.pt"
        torch.save(density.state_dict(), density_path)
        client.log_artifact(run_id, str(density_path), "density")
    tracking.log_json_artifact(client, run_id, density.summary(), "density_summary.json", "density")
    for name in ("evaluation.json", "train_log.jsonl", "detector.json"):
        client.log_artifact(run_id, str(files / name), "results")
    if (files / HEATMAPS_NAME).is_file():
        client.log_artifact(run_id, str(files / HEATMAPS_NAME), "heatmaps")
    # The model goes last, then the run is marked finished: a FINISHED run always has complete artifacts.
    model_uri, digest = log_detector_model(files, run_id=run_id)
    tracking.set_tags(client, run_id, {TAG_MODEL_URI: model_uri, TAG_SHA256: digest, **_scoring_tags(bundle)})
    tracking.finish_run(client, run_id)
    record = _finished_record(spec, final)
    record["validation_digest"] = str((bundle["meta"].get("validation") or {}).get("digest", ""))
    samples = evaluation["samples"]
    record.update(
        mlflow_run_id=run_id,
        model_uri=model_uri,
        sha256=digest,
        threshold=final["threshold"],
        expected_fpr=final.get("expected_fpr"),
        scores=[x["score"] for x in samples],
        labels=[x["label"] for x in samples],
    )
    return record


def _final_metrics(
    evaluation: dict[str, Any], bundle: dict[str, Any], density: GaussianDensity, phases: dict[str, float] | None
) -> dict[str, float]:
    """A finished run's metrics: test results, the threshold with its expected and realised FPR, validation,
    timings."""
    final = {
        "image_auroc": evaluation["image_auroc"],
        "aupr": evaluation["aupr"],
        "f1_max": evaluation["f1_max"],
        "threshold": bundle["threshold"],
        "accuracy_at_threshold": evaluation["accuracy_at_threshold"],
        **{f"auroc_{k}": v for k, v in evaluation["per_defect_auroc"].items()},
        **density.summary(),
    }
    if evaluation.get("aupro") is not None:
        final.update(pixel_auroc=evaluation["pixel_auroc"], aupro=evaluation["aupro"])
    validation = bundle["meta"].get("validation") or {}
    final.update({k: v for k, v in validation.items() if k.startswith("val_")})
    encoder = bundle["meta"].get("encoder_choice")
    if encoder:  # the trained encoder against its untrained twin, on the same validation anomalies
        final.update(
            encoder_trained_val_auroc=encoder["trained_val_auroc"],
            encoder_untrained_val_auroc=encoder["untrained_val_auroc"],
        )
    selection = bundle["meta"].get("image_score_selection")
    if selection:  # image_score=auto: every candidate's validation AUROC on the training images
        final.update({f"auto_val_auroc_{name}": v for name, v in selection["val_auroc"].items()})
    calibration = bundle["meta"].get("calibration")
    if calibration:  # the false-positive rate the threshold is expected to give, with its bootstrap interval
        final.update(
            expected_fpr=calibration["expected_fpr"],
            expected_fpr_low=calibration["fpr_low"],
            expected_fpr_high=calibration["fpr_high"],
        )
    if evaluation.get("test_fpr") is not None:  # and the rate it gave on the test split's normal images
        final["test_fpr"] = evaluation["test_fpr"]
    # Where the run's time went, as the status board saw it (seconds queued, training, evaluating).
    final.update({f"seconds_{state}": value for state, value in (phases or {}).items()})
    return final


def _scoring_tags(bundle: dict[str, Any]) -> dict[str, str]:
    """How the detector scores images, and for ``image_score=auto`` which candidate it chose."""
    config = bundle["config"]
    tags = {"cutpaste.image_score": f"{config.get('image_score')} ({config.get('feature_density')})"}
    selection = bundle["meta"].get("image_score_selection")
    if selection:
        tags["cutpaste.auto_choice"] = selection["chosen"]
    encoder = bundle["meta"].get("encoder_choice")
    if encoder:  # untrained_fallback: which encoder shipped, trained or its random-weight twin
        tags["cutpaste.encoder"] = str(encoder["shipped"])
    digest = (bundle["meta"].get("validation") or {}).get("digest")
    if digest:  # which validation set val_auroc was read on: champions compare within one digest
        tags[TAG_VALIDATION_DIGEST] = str(digest)
    return tags


def _finished_record(spec: RunSpec, metrics: dict[str, float]) -> dict[str, Any]:
    """The results-table record of a finished run from its final metrics (pixel ones where logged)."""
    return asdict(
        RunRecord(
            spec.category,
            spec.seed,
            "finished",
            image_auroc=metrics["image_auroc"],
            pixel_auroc=metrics.get("pixel_auroc"),
            aupro=metrics.get("aupro"),
            run_name=spec.name,
            val_auroc=metrics.get("val_auroc"),
            expected_fpr=metrics.get("expected_fpr"),
            test_fpr=metrics.get("test_fpr"),
        )
    )


def _record_from_mlflow(client: MlflowClient, run_id: str, spec: RunSpec) -> dict[str, Any] | None:
    run = client.get_run(run_id)
    if run.info.status != "FINISHED" or "image_auroc" not in run.data.metrics or TAG_MODEL_URI not in run.data.tags:
        return None
    record = _finished_record(spec, run.data.metrics)
    record.update(mlflow_run_id=run_id, model_uri=run.data.tags[TAG_MODEL_URI], skipped=True)
    tags = run.data.tags
    record.update(sha256=tags.get(TAG_SHA256), retries=int(tags.get("cutpaste.retries", 0)))
    record["faults"] = tags.get("cutpaste.faults", "")
    record["validation_digest"] = tags.get(TAG_VALIDATION_DIGEST, "")
    record.update({k: run.data.metrics.get(k) for k in ("threshold", "expected_fpr")})
    return record


@dataclass
class _Session:
    """What the steps of one benchmark share: the parent MLflow run they log under, the status board the
    runs report to (``board.handle`` for workers), each queued run's metric buffer (the scheduling loop
    forwards into them) and the infrastructure faults each run was retried for."""

    bench: BenchmarkConfig
    client: MlflowClient
    experiment_id: str
    parent_id: str
    board: Announcer
    train_config: TrainConfig
    buffers: dict[str, tracking.MetricBuffer] = field(default_factory=dict)
    faults: dict[str, list[str]] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)  # run -> its workers' placement group, as reported


def run_benchmark(bench: BenchmarkConfig, train_config: TrainConfig) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Runs (or resumes) the whole benchmark; returns the run records and the results files."""
    client, experiment_id, parent_id = _open_parent_run(bench, train_config)
    board = Announcer(StatusBoard.remote())
    session = _Session(bench, client, experiment_id, parent_id, board=board, train_config=train_config)
    printer = StatusPrinter(board.handle)
    records, queue = _queue_runs(session, _plan_runs(bench, train_config))
    _describe(session, records, state="running")
    printer.poll(force=True)
    records += _run_queue(session, queue, printer)
    printer.poll(force=True)
    _add_phases(records, ray.get(board.handle.phase_seconds.remote()))
    if bench.register_models:
        _register_champions(client, records, bench)
    return records, _write_and_log_results(session, records)


def _describe(session: _Session, records: list[dict[str, Any]], *, state: str) -> None:
    """The parent's and the finished children's descriptions (the run pages are the report), rewritten on
    every call, so a resumed benchmark updates them. Never fails the benchmark."""
    try:
        finished = [_to_record(r) for r in records if r["status"] == "finished"]
        results = to_markdown(summarise(finished)) if finished else ""
        note = descriptions.parent_note(
            benchmark_id=session.bench.benchmark_id,
            data=tracking.redact_uri(session.bench.data),
            train_config=session.train_config,
            seeds=session.bench.seeds,
            results_markdown=results,
            records=records,
            experiment_id=session.experiment_id,
            state=state,
        )
        tracking.set_tags(session.client, session.parent_id, {descriptions.NOTE_TAG: note})
        parent = descriptions.run_link(session.experiment_id, session.parent_id, session.bench.benchmark_id)
        for r in records:
            if r["status"] == "finished" and r.get("mlflow_run_id"):
                where = r.get("registered_version") and (
                    f"registered as `models:/cutpaste-{r['category']}@champion` (version {r['registered_version']}, "
                    f"SHA-256 `{r.get('sha256')}`)"
                )
                child = descriptions.child_note(
                    category=r["category"], seed=r["seed"], metrics=r, registered=where, parent_link=parent
                )
                tracking.set_tags(session.client, r["mlflow_run_id"], {descriptions.NOTE_TAG: child})
    except Exception:
        traceback.print_exc()  # a description is a convenience: the results are already safe


def _open_parent_run(bench: BenchmarkConfig, train_config: TrainConfig) -> tuple[MlflowClient, str, str]:
    """The benchmark's parent run, created or (same benchmark id) resumed, with its params logged.
    Returns (client, experiment id, parent run id)."""
    # Ray Train starts a preemption-watcher actor (one more process, ~2 CPU-s) per run, for observability
    # only; recovery from a lost node is FailureConfig's. Off unless the user turned it on.
    os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")
    mlflow.set_tracking_uri(bench.mlflow_uri)  # the fluent API (model logging) uses it
    client = MlflowClient(bench.mlflow_uri)
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
    tracking.log_params(client, parent_id, _benchmark_params(bench, train_config))
    return client, experiment_id, parent_id


def _benchmark_params(bench: BenchmarkConfig, train_config: TrainConfig) -> dict[str, Any]:
    """The parent run's params. URIs may carry credentials (http://user:password@host): params keep only
    the redacted form."""
    bench_params = {
        f"benchmark.{k}": tracking.redact_uri(v) if isinstance(v, str) else v for k, v in asdict(bench).items()
    }
    return {**bench_params, **flatten(train_config)}


def _plan_runs(bench: BenchmarkConfig, train_config: TrainConfig) -> list[tuple[RunSpec, TrainConfig]]:
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


def _run_params(spec: RunSpec, config: TrainConfig) -> dict[str, Any]:
    """A run's params: its whole config, flat, plus what it trained on (so a run can be compared alone)."""
    return {**flatten(config), "category": spec.category, "data": spec.data}


def _queue_runs(
    session: _Session, plan: list[tuple[RunSpec, TrainConfig]]
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
        done = _record_from_mlflow(client, run_id, spec)
        if done is not None:
            detail = f"finished earlier, image AUROC {100 * done['image_auroc']:.1f}"
            board.update(spec.name, "skipped", detail=detail)
            records.append(done)
            continue
        tracking.log_params(client, run_id, _run_params(spec, config))
        _log_run_datasets(session, spec, run_id, inputs)
        client.update_run(run_id, status="RUNNING")
        board.update(spec.name, "queued")
        session.buffers[spec.name] = tracking.MetricBuffer(bench.mlflow_uri, run_id)
        queue.append((spec, run_id))
    return records, queue


def _log_run_datasets(session: _Session, spec: RunSpec, run_id: str, inputs: dict[str, list]) -> None:
    """The run's training and test files as MLflow datasets; a listing problem is reported, not fatal."""
    try:
        if spec.category not in inputs:
            inputs[spec.category] = datasets.dataset_inputs(spec.data, spec.category, endpoint_url=spec.s3_endpoint)
        datasets.log_datasets(session.client, run_id, inputs[spec.category])
    except Exception as exc:
        print(f"{spec.name}: could not log its datasets ({faults.describe(exc)})", flush=True)


def _run_queue(session: _Session, queue: list[tuple[RunSpec, str]], printer: StatusPrinter) -> list[dict[str, Any]]:
    """Trains the queued runs, forwarding their metrics as they come; returns their records in the order
    they ended. A run lost to an infrastructure fault goes back to the front of the queue (see _finish)."""
    bench, board = session.bench, session.board
    records: list[dict[str, Any]] = []
    running: dict[Future, tuple[RunSpec, str]] = {}
    reaper = placement.IdleGroupReaper()
    while queue or running:
        # Started only when the cluster can take them: a waiting run would hold a controller process.
        while queue and len(running) < runs_at_once(bench):
            spec, run_id = queue.pop(0)
            # Its slot is free: Ray Train start-up until it trains.
            board.update(spec.name, "starting", detail=f"attempt {spec.attempt + 1}" if spec.attempt else "")
            running[_start_run(spec, bench, board.handle)] = (spec, run_id)
        ready, _ = wait(running, timeout=2.0, return_when=FIRST_COMPLETED)
        board.check()
        session.groups.update(ray.get(board.handle.placement_groups.remote()))
        reaper.sweep()
        _forward_metrics(board.handle, session.buffers)
        for future in ready:
            spec, run_id = running.pop(future)
            record = _finish(session, spec, run_id, future.result())
            if record is None:
                queue.insert(0, (replace(spec, attempt=spec.attempt + 1), run_id))
            else:
                records.append(record)
        printer.poll()
    reaper.sweep(idle_s=0.0)  # no run is left: whatever group of this job is still unused was left behind
    return records


def _add_phases(records: list[dict[str, Any]], phases: dict[str, dict[str, float]]) -> None:
    """Puts where each run's time went into its record (the results files show it; runs skipped as
    finished earlier get nothing)."""
    for record in records:
        record["phases"] = phases.get(record.get("run_name"), {})


def _write_and_log_results(session: _Session, records: list[dict[str, Any]]) -> dict[str, Path]:
    """Writes the results files, then logs them under the parent run and ends it (failed if any run
    failed); returns the files."""
    bench, client, parent_id = session.bench, session.client, session.parent_id
    out = Path(bench.out)
    paths = write_results([_to_record(r) for r in records], out)
    failed = sum(r["status"] != "finished" for r in records)
    _write_driver_report(out, records)

    def log_results() -> None:
        _log_parent(client, parent_id, records, paths, bench)
        _describe(session, records, state=f"finished, {failed} of {len(records)} runs failed" if failed else "finished")
        tracking.finish_run(client, parent_id, failed=bool(failed))

    try:
        _with_tracking_retries(bench, "logging the results", log_results)
    except Exception as exc:
        # Tracking is down for good: everything trained is on disk; say where, and how to finish the logging.
        raise tracking.TrackingError(
            f"MLflow at {tracking.redact_uri(bench.mlflow_uri)} failed ({faults.describe(exc)}); results are in "
            f"{out} and trained detectors in {bench.storage}; run the same --benchmark-id again once MLflow is back"
        ) from None
    return paths


def _write_driver_report(out: Path, records: list[dict[str, Any]]) -> None:
    """``driver.json``: where each run's time went and what the driver itself cost (bench/scale.py reads it)."""
    report = {
        "wall_s": time.monotonic() - _DRIVER_START,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux reports KiB
        "runs": len(records),
        "finished": sum(r["status"] == "finished" for r in records),
        "mlflow_runs": 1 + sum(bool(r.get("mlflow_run_id")) for r in records),
        "phases": {r["run_name"]: r.get("phases", {}) for r in records if r.get("run_name")},
    }
    atomic_write_text(json.dumps(report, indent=2), out / "driver.json")


def runs_at_once(bench: BenchmarkConfig) -> int:
    """How many runs the cluster holds now, plus one that waits for the next free slot (its start-up then
    overlaps the others' training, and an autoscaler sees the demand). Re-read as nodes come and go."""
    total = ray.cluster_resources()
    fits = total.get("CPU", 0.0) // max(bench.cpus_per_worker * bench.workers_per_run, 1e-9)
    if bench.gpus_per_run:
        fits = min(fits, total.get("GPU", 0.0) // bench.gpus_per_run)
    return int(fits) + 1


def _forward_metrics(board: Any, buffers: dict[str, tracking.MetricBuffer]) -> None:
    for name, rows in ray.get(board.drain_metrics.remote()).items():
        for row in rows:
            buffers[name].log({k: v for k, v in row.items() if k != "step"}, int(row["step"]), flush=False)
        buffers[name].flush()


def _finish(session: _Session, spec: RunSpec, run_id: str, outcome: dict[str, Any]) -> dict[str, Any] | None:
    """Logs a run's results to MLflow and returns its record; None when the run is to be tried again (an
    infrastructure fault in training or logging, within ``--max-failures``). A failure never crashes the
    driver: it becomes a failed record."""
    bench, board, client = session.bench, session.board, session.client
    # Every run's pending records, not only this one's: draining the board takes them all (at 20 runs and
    # more, another run's records were in the same drain).
    _forward_metrics(board.handle, session.buffers)
    try:
        session.buffers[spec.name].close(timeout_s=bench.tracking_timeout_s)
        if outcome["status"] != "finished":
            if outcome["retryable"] and _retry(session, spec, run_id, outcome["error"]):
                return None
            return _failed(session, spec, run_id, outcome["error"])
        board.update(spec.name, "logging")
        faults.inject("logging", spec.name)
        with tempfile.TemporaryDirectory(prefix="cutpaste-result-") as tmp:
            files = fetch_result_files(outcome["checkpoint"], Path(tmp))
            phases = ray.get(board.handle.phase_seconds.remote()).get(spec.name)
            record = _log_finished_run(client, spec, run_id, files, bench, phases)
        record.update(_retries(session, spec))
        if record["retries"]:
            tracking.set_tags(client, run_id, _retry_tags(record))
        board.update(spec.name, "done", detail=f"image AUROC {100 * record['image_auroc']:.1f}")
        return record
    except Exception as exc:
        reason = f"logging to MLflow failed: {faults.describe(exc)}"
        # MLflow (or the checkpoint store) went away and is back: the next attempt reuses the finished bundle
        # and trains nothing. Still away after --tracking-timeout: the run fails, with its detector kept.
        if faults.is_infrastructure_fault(exc) and _wait_for_tracking(bench) and _retry(session, spec, run_id, reason):
            return None
        if outcome.get("checkpoint") is not None:
            reason += f"; the trained detector is kept in {outcome['checkpoint'].path}"
        traceback.print_exc()
        return _failed(session, spec, run_id, reason)


def _retry(session: _Session, spec: RunSpec, run_id: str, cause: str) -> bool:
    """Queues the run again when its failure budget allows; it resumes from its last checkpoint."""
    causes = session.faults.setdefault(spec.name, [])
    if len(causes) >= session.bench.max_failures:
        return False
    causes.append(cause)
    placement.release(session.groups.pop(spec.name, None))
    attempt = f"attempt {len(causes) + 1} of {session.bench.max_failures + 1}"
    session.board.update(spec.name, "retrying", detail=f"{attempt} after {cause[:200]}")
    print(f"{spec.name}: retrying ({attempt}) after {cause}", flush=True)
    session.buffers[spec.name] = tracking.MetricBuffer(session.bench.mlflow_uri, run_id)
    return True


def _retries(session: _Session, spec: RunSpec) -> dict[str, Any]:
    causes = session.faults.get(spec.name, [])
    return {"retries": len(causes), "faults": "; ".join(causes)}


def _retry_tags(retried: dict[str, Any]) -> dict[str, Any]:
    return {"cutpaste.retries": retried["retries"], "cutpaste.faults": retried["faults"][:5000]}


def _failed(session: _Session, spec: RunSpec, run_id: str, reason: str) -> dict[str, Any]:
    """A failed run's record; its MLflow run is marked failed with the reason (best effort: MLflow may be the
    reason)."""
    session.board.update(spec.name, "failed", detail=reason)
    placement.release(session.groups.pop(spec.name, None))
    retried = _retries(session, spec)
    try:
        tracking.set_tags(session.client, run_id, {"cutpaste.error": reason[:5000], **_retry_tags(retried)})
        tracking.finish_run(session.client, run_id, failed=True)
    except Exception:
        traceback.print_exc()
    record = RunRecord(spec.category, spec.seed, "failed", error=reason, run_name=spec.name)
    return {**asdict(record), **retried}


def _to_record(data: dict[str, Any]) -> RunRecord:
    return RunRecord(**{k: data.get(k) for k in RunRecord.__dataclass_fields__ if k in data})


def choose_champions(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each category's champion among its finished runs: the highest validation AUROC (synthetic anomalies
    against out-of-fold training scores), ties and runs without one going to the lowest seed. AUROCs
    compare only on one validation set: the runs of the digest most of the category's runs share (ties:
    the lowest seed's) compete, so a run scored on other anomalies never wins by them. Test metrics are
    in the records for the table; this function never reads them."""
    finished: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["status"] == "finished":
            finished.setdefault(r["category"], []).append(r)

    def key(r: dict[str, Any]) -> tuple[float, int]:
        val = r.get("val_auroc")
        return (float("-inf") if val is None else float(val), -int(r["seed"]))

    best: dict[str, dict[str, Any]] = {}
    for category, runs in finished.items():
        counts = Counter(r.get("validation_digest") or "" for r in runs)
        lowest_seed = min(runs, key=lambda r: int(r["seed"])).get("validation_digest") or ""
        digest = max(counts, key=lambda d: (counts[d], d == lowest_seed))
        best[category] = max((r for r in runs if (r.get("validation_digest") or "") == digest), key=key)
    return best


def _register_champions(client: MlflowClient, records: list[dict[str, Any]], bench: BenchmarkConfig) -> None:
    """Registers each category's champion (:func:`choose_champions`) as ``cutpaste-<category>@champion``; each
    version is tagged with its benchmark id (versions from benchmarks sharing a registry stay attributable),
    its validation AUROC (what chose it) and its test AUROC (reported, never read for the choice). MLflow
    lost on the way is waited for and the registration tried again (it is idempotent), ``--max-failures``
    times."""
    for category, r in sorted(choose_champions(records).items()):
        name = f"cutpaste-{category}"
        tags = {
            tracking.TAG_BENCHMARK: bench.benchmark_id,
            "cutpaste.run_name": r["run_name"],
            "cutpaste.chosen_by": "val_auroc (held-in normals out-of-fold + synthetic anomalies)",
            "cutpaste.val_auroc": f"{r.get('val_auroc')}",
            TAG_VALIDATION_DIGEST: f"{r.get('validation_digest')}",
            "cutpaste.test_image_auroc": f"{r.get('image_auroc')}",
            # The digest the version's loaders insist on (also in the model's model_config).
            TAG_SHA256: f"{r.get('sha256')}",
        }
        try:
            version = _with_tracking_retries(
                bench,
                f"registering {name}",
                tracking.register_champion,
                client,
                name,
                r["mlflow_run_id"],
                model_uri=r["model_uri"],
                aliases=("champion",),
                tags=tags,
            )
        except Exception as exc:
            # The run's results stay valid; only the registry step failed, and the exit code says so.
            r["registration_error"] = faults.describe(exc)
            print(f"could not register {name}: {r['registration_error']}", flush=True)
            continue
        r["registered_version"] = version
        print(f"registered {name} version {version} as @champion ({r['run_name']})", flush=True)


def _with_tracking_retries(bench: BenchmarkConfig, what: str, action: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``action(*args, **kwargs)``, an idempotent MLflow step, tried again once MLflow answers (``--max-failures``
    times) when it failed for an infrastructure fault; any other error, or the last one, is raised."""
    for attempt in range(bench.max_failures + 1):
        try:
            return action(*args, **kwargs)
        except Exception as exc:
            if attempt >= bench.max_failures or not faults.is_infrastructure_fault(exc):
                raise
            print(f"{what} failed ({faults.describe(exc)}); waiting for MLflow to try again", flush=True)
            _wait_for_tracking(bench)
    raise AssertionError("unreachable")


def _wait_for_tracking(bench: BenchmarkConfig) -> bool:
    """Until the tracking server answers its health check, at most ``tracking_timeout_s``; True if it does."""
    deadline = time.monotonic() + bench.tracking_timeout_s
    while True:
        try:
            tracking.check_reachable(bench.mlflow_uri, timeout_s=5.0)
            return True
        except tracking.TrackingError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(1.0)


def _log_parent(
    client: MlflowClient, parent_id: str, records: list[dict[str, Any]], paths: dict[str, Path], bench: BenchmarkConfig
) -> None:
    rows = summarise([_to_record(r) for r in records])
    table = {key: [getattr(row, key) for row in rows] for key in rows[0].__dataclass_fields__} if rows else {}
    if table:
        client.log_table(parent_id, data=table, artifact_file="results_table.json")
    for path in paths.values():
        client.log_artifact(parent_id, str(path), "results")
    summary = next((r for r in rows if r.category == "mean"), None)
    if summary and summary.image_auroc_mean is not None:
        tracking.MetricBuffer(bench.mlflow_uri, parent_id).log({"mean_image_auroc": summary.image_auroc_mean}, 0)
    for row in rows:
        if row.kind != "average" and row.image_auroc_mean is not None:
            client.log_metric(parent_id, f"image_auroc.{row.category}", row.image_auroc_mean)
    try:
        for name, figure in figures.benchmark_figures(client, records).items():
            client.log_figure(parent_id, figure, f"figures/{name}.png")
            figures.close(figure)
    except Exception:
        # Figures are a convenience: a plotting problem must not fail a finished benchmark.
        traceback.print_exc()
    _log_sample_heatmaps(client, parent_id, records)
    tracking.set_tags(client, parent_id, {"cutpaste.results": to_markdown(rows)[:4900]})


def _log_sample_heatmaps(client: MlflowClient, parent_id: str, records: list[dict[str, Any]]) -> None:
    """Each finished run's review figure, gathered under the parent's ``heatmaps/`` as ``<run>.png``, and per
    category the champion's (else the first seed's) as ``figures/review_<category>.png``."""
    shown = choose_champions(records)
    with tempfile.TemporaryDirectory(prefix="cutpaste-heatmaps-") as tmp:
        for r in records:
            if r["status"] != "finished":
                continue
            try:
                path = client.download_artifacts(r["mlflow_run_id"], f"heatmaps/{HEATMAPS_NAME}", tmp)
            except Exception:
                continue  # no maps for this run (or an older run): nothing to show
            named = Path(tmp) / f"{r['run_name']}.png"
            Path(path).replace(named)
            client.log_artifact(parent_id, str(named), "heatmaps")
            if shown.get(r["category"]) is r:
                review = Path(tmp) / f"review_{r['category']}.png"
                shutil.copyfile(named, review)
                client.log_artifact(parent_id, str(review), "figures")


def wait_for_resources(gpus_needed: float, cpus_needed: float, timeout_s: float) -> None:
    """Fails with a clear message (instead of hanging) when the cluster cannot hold even one run.

    While waiting, the autoscaler (when there is one) is asked for a node that fits one run, so a
    cluster whose GPU workers are scaled to zero starts one instead of waiting for nothing."""
    deadline = time.monotonic() + timeout_s
    asked = False
    while True:
        total = ray.cluster_resources()
        gpus, cpus = total.get("GPU", 0.0), total.get("CPU", 0.0)
        if gpus >= gpus_needed and cpus >= cpus_needed:
            if asked:  # the request is sticky: drop it, queued runs now keep the nodes busy themselves
                request_resources(bundles=[])
            return
        if timeout_s > 0 and not asked:
            bundle = {"CPU": cpus_needed, **({"GPU": gpus_needed} if gpus_needed else {})}
            request_resources(bundles=[bundle])
            asked = True
        if time.monotonic() >= deadline:
            raise BenchmarkError(
                f"one run needs {gpus_needed:g} GPU and {cpus_needed:g} CPU but the cluster has {gpus:g} GPU and "
                f"{cpus:g} CPU; lower --gpus-per-run/--workers-per-run, add nodes, or pass --wait-for-resources"
            )
        time.sleep(2.0)
