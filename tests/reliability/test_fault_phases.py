"""A process lost at each phase of a run: start-up, fitting the density, evaluation, the final checkpoint upload
and the driver's model logging. Each run still FINISHES, says how often it was retried and why, and ends with
the image AUROC of an undisturbed run of the same seed (test_worker_loss.py covers mid-training)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from ray.util.placement_group import placement_group_table

from cutpaste.detector import Detector
from infra.local.services import ray_worker_pids
from pipelines import benchmark_results, faults
from tests.reliability.bench_thread import BenchmarkThread
from tests.reliability.test_worker_loss import _mlflow_runs

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STEPS = 10


def _only_record(bench: BenchmarkThread) -> dict:
    assert bench.code == 0, bench.code
    (record,) = bench.records()
    assert record["status"] == "finished", record
    return record


@pytest.fixture(scope="module")
def undisturbed(stack) -> dict:
    bench = BenchmarkThread(stack, "phase-reference", stack.categories[0], steps=STEPS)
    bench.start()
    bench.join(timeout=600)
    record = _only_record(bench)
    assert record["retries"] == 0 and record["faults"] == ""
    return record


def _kill_when(bench: BenchmarkThread, find, timeout_s: float = 300) -> int:
    deadline = time.monotonic() + timeout_s
    while not (victims := find()):
        assert bench.is_alive() and time.monotonic() < deadline, bench.code
        time.sleep(0.02)
    os.kill(victims[0], signal.SIGKILL)
    return victims[0]


def _is_zombie(pid: int) -> bool:
    """A killed process its parent has not reaped yet: dead, though ``/proc`` still lists it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_worker_lost_in_start_up(stack, undisturbed):
    """Killed while Ray Train initialises its train context (the process exists, the training function has
    not started). Ray 2.60 retries this start itself (WorkerGroupStartupFailedError; the benchmark would
    retry a ControllerError it did not). The run ends as the undisturbed one."""
    bench = BenchmarkThread(stack, "phase-startup", stack.categories[0], steps=STEPS)
    bench.start()
    victim = _kill_when(bench, lambda: ray_worker_pids(stack.ray_temp, "ray::RayTrainWorker.init_train_context"))
    # The kill took: a new train worker (another process) starts in the victim's place. A kill that missed
    # (the fault a no-op) leaves the victim to train, and no other worker process ever appears.
    bench.wait(
        lambda: set(ray_worker_pids(stack.ray_temp, "ray::RayTrainWorker")) - {victim},
        timeout_s=300,
        what=f"train worker replacing the killed pid {victim}",
    )
    bench.join(timeout=600)
    record = _only_record(bench)
    assert not Path(f"/proc/{victim}").exists() or _is_zombie(victim), f"pid {victim} outlived its SIGKILL"
    # Ray retried the start itself: the benchmark's own retry count stays 0 and names no fault.
    assert record["retries"] == 0 and record["faults"] == "", record
    assert record["image_auroc"] == pytest.approx(undisturbed["image_auroc"], abs=1e-6)


def test_a_controller_lost_mid_training_is_retried_by_the_benchmark(stack, undisturbed):
    """Ray Train never retries its own controller: fit() fails with the actor's death, the benchmark queues
    the run again under the same name, and it resumes from its last checkpoint."""
    bench = BenchmarkThread(stack, "phase-controller", stack.categories[0], steps=STEPS)
    bench.start()
    bench.wait_for_registered(1)
    _kill_when(bench, lambda: ray_worker_pids(stack.ray_temp, "ray::TrainController"))
    bench.join(timeout=600)
    record = _only_record(bench)
    assert record["retries"] == 1 and "ActorDiedError" in record["faults"], record
    assert record["image_auroc"] == pytest.approx(undisturbed["image_auroc"], abs=1e-6)
    finals = [p for p in bench.run_dir.glob("checkpoint_*") if (p / "detector.pt").is_file()]
    assert finals and Detector.load(finals[-1]).meta["resumed_from_step"] > 0
    # The dead controller's placement group is gone (this Ray has no dashboard, so Ray Train's own cleaner
    # cannot see that the controller died): nothing keeps the cluster's CPUs reserved.
    assert [g for g in placement_group_table().values() if g["state"] != "REMOVED"] == []


def test_workers_lost_fitting_the_density_evaluating_and_uploading(stack, undisturbed, monkeypatch, tmp_path):
    """Three kills at fixed points of one run, each after the training's last checkpoint: every restart
    resumes at the final step (nothing is trained again) and the run ends as the undisturbed one."""
    points = ("density", "evaluation", "final_checkpoint")
    monkeypatch.setenv(faults.FAULT_ENV, ",".join(f"{p}:{tmp_path / p}" for p in points))
    extra = ("--max-failures", "3")
    bench = BenchmarkThread(stack, "phase-late", stack.categories[0], steps=STEPS, extra=extra)
    bench.start()
    bench.join(timeout=900)
    record = _only_record(bench)
    assert all((tmp_path / p).is_file() for p in points)  # every fault fired
    assert record["retries"] == 3, record
    assert record["image_auroc"] == pytest.approx(undisturbed["image_auroc"], abs=1e-6)
    run = _mlflow_runs(stack, "phase-late")[record["run_name"]]
    assert run.info.status == "FINISHED" and run.data.tags["cutpaste.retries"] == "3"


def test_mlflow_lost_while_the_model_is_logged(stack, undisturbed, monkeypatch):
    """The tracking server dies as the driver starts logging the model and comes back 5 s later: the run is
    tried again, reuses its finished bundle (no training), and is logged and registered."""
    original = benchmark_results.log_detector_model
    calls: list[float] = []

    def lose_mlflow_first(*args, **kwargs):
        calls.append(time.monotonic())
        if len(calls) == 1:
            stack.mlflow.stop()
            threading.Timer(5.0, stack.mlflow.start).start()
        return original(*args, **kwargs)

    monkeypatch.setattr(benchmark_results, "log_detector_model", lose_mlflow_first)
    bench = BenchmarkThread(stack, "phase-logging", stack.categories[0], steps=STEPS)
    bench.start()
    bench.join(timeout=600)
    assert stack.mlflow.running()
    record = _only_record(bench)
    assert len(calls) == 2 and record["retries"] == 1 and "logging to MLflow failed" in record["faults"]
    assert record["image_auroc"] == pytest.approx(undisturbed["image_auroc"], abs=1e-6)
    client = MlflowClient(stack.mlflow.uri)
    run = _mlflow_runs(stack, "phase-logging")[record["run_name"]]
    assert run.info.status == "FINISHED" and run.data.tags["cutpaste.retries"] == "1"
    version = client.get_model_version_by_alias(f"cutpaste-{stack.categories[0]}", "champion")
    assert version.run_id == run.info.run_id
    # The retry trained nothing: every training step was logged once.
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert steps and len(steps) == len(set(steps)), steps
