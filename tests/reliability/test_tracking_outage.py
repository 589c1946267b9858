"""The MLflow server dies during training. Back within the retry window: nothing is lost. Never back: the
benchmark ends with a clear error, the detector and results stay on disk, and nothing is registered."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient

from cutpaste.detector import Detector
from pipelines.full_benchmark import main
from tests.reliability.bench_thread import LOG_EVERY, STEPS, BenchmarkThread

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run(client: MlflowClient, benchmark_id: str):
    experiment = client.get_experiment_by_name("cutpaste-benchmark")
    runs = client.search_runs([experiment.experiment_id], f"tags.`cutpaste.benchmark_id` = '{benchmark_id}'")
    return next(r for r in runs if r.data.tags.get("cutpaste.role") == "run")


def test_an_outage_during_training_loses_no_metric(stack):
    # A restarting server can take a minute on a loaded machine: the logging waits up to five.
    bench = BenchmarkThread(stack, "outage-back", stack.categories[0], extra=("--tracking-timeout", "300"))
    try:
        bench.start()
        seen = bench.wait_for_registered(1)
        stack.mlflow.stop()
        down_at = time.monotonic()
        bench.wait_for_registered(len(seen) + 1)  # training goes on while tracking is down
        stack.mlflow.start()
        outage_s = time.monotonic() - down_at
        bench.join(timeout=600)
    finally:
        if not stack.mlflow.running():
            stack.mlflow.start()
    assert bench.code == 0, bench.code
    assert outage_s > 1
    client = MlflowClient(stack.mlflow.uri)
    run = _run(client, "outage-back")
    assert run.info.status == "FINISHED" and "image_auroc" in run.data.metrics
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))  # every record, once
    versions = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    assert len(versions) == 1


def test_a_server_that_never_returns_ends_in_a_clear_error_with_the_detector_kept(stack, capsys):
    """...and once it is back, the same benchmark id logs that detector without training it again."""
    bench = BenchmarkThread(stack, "outage-gone", stack.categories[1], extra=("--tracking-timeout", "3"))
    try:
        bench.start()
        bench.wait_for_registered(1)
        stack.mlflow.stop()
        bench.join(timeout=600)
    finally:
        stack.mlflow.start()
    printed = capsys.readouterr()
    assert bench.code == 2, (bench.code, printed.err[-3000:])
    # One error line (Ray's own warnings, e.g. about disk space, may print after it).
    errors = [line for line in printed.err.splitlines() if line.startswith("full_benchmark: error:")]
    assert len(errors) == 1, printed.err[-3000:]
    assert errors[0].startswith("full_benchmark: error: MLflow at ") and str(bench.out) in errors[0]
    # Results and the detector are on disk and in checkpoint storage.
    table = (bench.out / "results.md").read_text()
    assert "logging to MLflow failed" in table
    finals = [p for p in bench.run_dir.glob("checkpoint_*") if (p / "detector.pt").is_file()]
    assert len(finals) == 1 and (finals[0] / "evaluation.json").is_file()
    assert Detector.load(finals[0] / "detector.pt").threshold > 0
    assert str(finals[0]) in table
    # No registered version for the run, and the run is not marked finished.
    client = MlflowClient(stack.mlflow.uri)
    run = _run(client, "outage-gone")
    assert run.info.status != "FINISHED"
    assert client.search_model_versions(f"run_id = '{run.info.run_id}'") == []

    # MLflow is back: the same benchmark id logs the kept detector, without training it again.
    trained = (finals[0] / "detector.pt").read_bytes()
    assert main(bench.argv) == 0
    run = _run(client, "outage-gone")
    assert run.info.status == "FINISHED" and len(client.search_model_versions(f"run_id = '{run.info.run_id}'")) == 1
    latest = max((p for p in bench.run_dir.glob("checkpoint_*") if (p / "detector.pt").is_file()), key=lambda p: p.name)
    assert latest != finals[0] and (latest / "detector.pt").read_bytes() == trained  # the same bundle, not a retrain
