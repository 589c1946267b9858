"""The driver's queue: runs started as the cluster has room, each run's ``TorchTrainer.fit()`` in a driver
thread, metrics forwarded to MLflow as they come, and each ended run logged, retried or failed.

Why threads and not Ray tasks: a ``fit()`` is itself a Ray Train controller plus workers, so a task around it
would cost one more process per run for nothing; Ray Train supports ``fit()`` from driver threads. Why
daemon threads and not a ``ThreadPoolExecutor``: its threads are joined at interpreter exit, so Ctrl-C or
``ray job stop`` would wait for every fit(); with daemon threads the driver ends at once and Ray stops the
runs' controllers and workers, which the driver owns.
"""

from __future__ import annotations

import tempfile
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from ray.autoscaler.sdk import request_resources

from pipelines import faults, placement, tracking
from pipelines.benchmark_config import BenchmarkConfig, BenchmarkError, Session
from pipelines.benchmark_results import log_finished_run
from pipelines.benchmark_retries import failed, requeue, retries, retry_tags, wait_for_tracking
from pipelines.status import StatusPrinter
from pipelines.train_run import RunSpec, build_trainer, fetch_result_files


def execute_run(spec: RunSpec, bench: BenchmarkConfig, board: Any) -> dict[str, Any]:
    """Trains and evaluates one run on Ray Train (called in a driver thread). Never raises: a failure comes
    back as a reason, and whether it was an infrastructure fault (a retry may succeed) or not.

    Ray Train itself retries nothing here (``max_failures=0``): it would retry any worker error, bad data
    included, and not a lost controller. The driver retries instead (:func:`finish`), for infrastructure
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


def start_run(spec: RunSpec, bench: BenchmarkConfig, board: Any) -> Future:
    """``execute_run`` in a daemon thread (see the module's docstring); its end comes back as a future."""
    future: Future = Future()

    def target() -> None:
        try:
            future.set_result(execute_run(spec, bench, board))
        except BaseException as exc:  # never lose a thread's end: the driver waits on this future
            future.set_exception(exc)

    threading.Thread(target=target, name=f"cutpaste-{spec.name}", daemon=True).start()
    return future


def runs_at_once(bench: BenchmarkConfig) -> int:
    """How many runs the cluster holds now, plus one that waits for the next free slot (its start-up then
    overlaps the others' training, and an autoscaler sees the demand). Re-read as nodes come and go."""
    total = ray.cluster_resources()
    fits = total.get("CPU", 0.0) // max(bench.cpus_per_worker * bench.workers_per_run, 1e-9)
    if bench.gpus_per_run:
        fits = min(fits, total.get("GPU", 0.0) // bench.gpus_per_run)
    return int(fits) + 1


def forward_metrics(board: Any, buffers: dict[str, tracking.MetricBuffer]) -> None:
    """Moves every run's training records from the status board into its MLflow buffer."""
    for name, rows in ray.get(board.drain_metrics.remote()).items():
        for row in rows:
            buffers[name].log({k: v for k, v in row.items() if k != "step"}, int(row["step"]), flush=False)
        buffers[name].flush()


def run_queue(session: Session, queue: list[tuple[RunSpec, str]], printer: StatusPrinter) -> list[dict[str, Any]]:
    """Trains the queued runs, forwarding their metrics as they come; returns their records in the order
    they ended. A run lost to an infrastructure fault goes back to the front of the queue (see finish)."""
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
            running[start_run(spec, bench, board.handle)] = (spec, run_id)
        ready, _ = wait(running, timeout=2.0, return_when=FIRST_COMPLETED)
        board.check()
        session.groups.update(ray.get(board.handle.placement_groups.remote()))
        reaper.sweep()
        forward_metrics(board.handle, session.buffers)
        for future in ready:
            spec, run_id = running.pop(future)
            record = finish(session, spec, run_id, future.result())
            if record is None:
                queue.insert(0, (replace(spec, attempt=spec.attempt + 1), run_id))
            else:
                records.append(record)
        printer.poll()
    reaper.sweep(idle_s=0.0)  # no run is left: whatever group of this job is still unused was left behind
    return records


def finish(session: Session, spec: RunSpec, run_id: str, outcome: dict[str, Any]) -> dict[str, Any] | None:
    """Logs a run's results to MLflow and returns its record; None when the run is to be tried again (an
    infrastructure fault in training or logging, within ``--max-failures``). A failure never crashes the
    driver: it becomes a failed record."""
    # Every run's pending records, not only this one's: draining the board takes them all (at 20 runs and
    # more, another run's records were in the same drain).
    forward_metrics(session.board.handle, session.buffers)
    try:
        session.buffers[spec.name].close(timeout_s=session.bench.tracking_timeout_s)
        if outcome["status"] != "finished":
            if outcome["retryable"] and requeue(session, spec, run_id, outcome["error"]):
                return None
            return failed(session, spec, run_id, outcome["error"])
        return _log_outcome(session, spec, run_id, outcome)
    except Exception as exc:
        reason = f"logging to MLflow failed: {faults.describe(exc)}"
        # MLflow (or the checkpoint store) went away and is back: the next attempt reuses the finished bundle
        # and trains nothing. Still away after --tracking-timeout: the run fails, with its detector kept.
        if (
            faults.is_infrastructure_fault(exc)
            and wait_for_tracking(session.bench)
            and requeue(session, spec, run_id, reason)
        ):
            return None
        if outcome.get("checkpoint") is not None:
            reason += f"; the trained detector is kept in {outcome['checkpoint'].path}"
        traceback.print_exc()
        return failed(session, spec, run_id, reason)


def _log_outcome(session: Session, spec: RunSpec, run_id: str, outcome: dict[str, Any]) -> dict[str, Any]:
    """A finished run's results, fetched from its checkpoint and logged; raises when logging fails."""
    board = session.board
    board.update(spec.name, "logging")
    faults.inject("logging", spec.name)
    with tempfile.TemporaryDirectory(prefix="cutpaste-result-") as tmp:
        files = fetch_result_files(outcome["checkpoint"], Path(tmp))
        phases = ray.get(board.handle.phase_seconds.remote()).get(spec.name)
        record = log_finished_run(session.client, spec, run_id, files, session.bench, phases)
    record.update(retries(session, spec))
    if record["retries"]:
        tracking.set_tags(session.client, run_id, retry_tags(record))
    board.update(spec.name, "done", detail=f"image AUROC {100 * record['image_auroc']:.1f}")
    return record


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
