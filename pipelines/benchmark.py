"""The benchmark driver: one Ray Train run per (category, seed), tracked in MLflow, summarised as a table.

Each run's ``TorchTrainer.fit()`` is called from a thread of the driver (Ray Train supports that), as
many at once as the cluster has room for plus one waiting, so a run needs no process of its own beyond
Ray Train's controller and workers. A benchmark id names everything it writes (Ray run names, MLflow
runs, results), so running the same id again skips finished runs and resumes unfinished ones from their
checkpoints.

The steps live in their own modules; this one runs them in order and is what callers import:

- ``benchmark_config``: the flags (:class:`BenchmarkConfig`) and what the steps share (``Session``);
- ``benchmark_plan``: the parent run, the (category, seed) runs, which of them are done already;
- ``benchmark_queue``: starting runs as the cluster has room, finishing each (logged, retried or failed);
- ``benchmark_retries``: the retry policies (a lost run, an MLflow step, waiting for MLflow);
- ``benchmark_results``: what goes to MLflow and to the results files;
- ``registry``: each category's champion, registered as ``cutpaste-<category>@champion``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from cutpaste.config import TrainConfig
from pipelines.benchmark_config import (
    EXPERIMENT,
    PREEMPTION_WATCHER_ENV,
    TAG_MODEL_URI,
    TAG_VALIDATION_DIGEST,
    BenchmarkConfig,
    BenchmarkError,
    Session,
)
from pipelines.benchmark_plan import open_parent_run, plan_runs, queue_runs
from pipelines.benchmark_queue import execute_run, run_queue, runs_at_once, wait_for_resources
from pipelines.benchmark_results import add_phases, describe, write_and_log_results
from pipelines.registry import choose_champions, register_champions
from pipelines.status import Announcer, StatusBoard, StatusPrinter

__all__ = [
    "EXPERIMENT",
    "PREEMPTION_WATCHER_ENV",
    "TAG_MODEL_URI",
    "TAG_VALIDATION_DIGEST",
    "BenchmarkConfig",
    "BenchmarkError",
    "choose_champions",
    "execute_run",
    "run_benchmark",
    "runs_at_once",
    "wait_for_resources",
]


def run_benchmark(bench: BenchmarkConfig, train_config: TrainConfig) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Runs (or resumes) the whole benchmark; returns the run records and the results files."""
    client, experiment_id, parent_id = open_parent_run(bench, train_config)
    board = Announcer(StatusBoard.remote())
    session = Session(bench, client, experiment_id, parent_id, board=board, train_config=train_config)
    printer = StatusPrinter(board.handle)
    try:
        records, queue = queue_runs(session, plan_runs(bench, train_config))
        describe(session, records, state="running")
        printer.poll(force=True)
        records += run_queue(session, queue, printer)
        printer.poll(force=True)
    finally:
        printer.close()  # a terminal's live table ends here even when the driver stops on an error
    add_phases(records, ray.get(board.handle.phase_seconds.remote()))
    if bench.register_models:
        register_champions(client, records, bench)
    return records, write_and_log_results(session, records)
