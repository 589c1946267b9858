"""A Ray Train worker is SIGKILLed mid-run: Ray restarts it (FailureConfig), it resumes from the last reported
checkpoint, and the run ends exactly where an uninterrupted run of the same seed ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cutpaste.detector import Detector
from cutpaste.presets import load_config
from cutpaste.workflow import train_category
from infra.local.services import ray_worker_pids
from tests.reliability.bench_thread import BenchmarkThread, registered_checkpoints
from tests.reliability.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def train_worker_pids(ray_temp: Path) -> list[int]:
    """RayTrainWorker processes of this test's Ray only (other Ray clusters may run on the machine)."""
    return ray_worker_pids(ray_temp, "ray::RayTrainWorker")


def test_a_killed_worker_resumes_and_ends_like_an_uninterrupted_run(stack):
    category = stack.categories[0]
    bench = BenchmarkThread(stack, "worker-loss", category)
    bench.start()
    bench.wait_for_registered(1)
    victims = train_worker_pids(stack.ray_temp)
    assert len(victims) == 1, victims
    os.kill(victims[0], signal.SIGKILL)
    bench.join(timeout=600)
    assert bench.code == 0, bench.code
    finals = [p for p in bench.run_dir.glob("checkpoint_*") if (p / "detector.pt").is_file()]
    assert len(finals) == 1
    resumed = Detector.load(finals[0])
    assert resumed.meta["resumed_from_step"] > 0  # from a checkpoint, not from scratch

    # The reference: the library alone, in this process, one thread like a Ray worker, never interrupted.
    config = load_config(stack.work / "worker-loss.json")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = train_category(config, stack.data, category, stack.work / "reference", device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert reference.training.resumed_from_step == 0
    history = [json.loads(line) for line in (finals[0] / "train_log.jsonl").read_text().splitlines()]
    expected = reference.training.history
    assert [r["step"] for r in history] == [r["step"] for r in expected]
    for mine, theirs in zip(history, expected, strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5, abs=1e-6)
        assert mine["accuracy"] == pytest.approx(theirs["accuracy"], abs=1e-6)
        assert mine["lr"] == pytest.approx(theirs["lr"], rel=1e-9)
    for name, tensor in reference.detector.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert resumed.threshold == pytest.approx(reference.detector.threshold, rel=1e-4)


def _mlflow_runs(stack, benchmark_id: str) -> dict[str, object]:
    from mlflow import MlflowClient

    client = MlflowClient(stack.mlflow.uri)
    experiment = client.get_experiment_by_name("cutpaste-benchmark")
    if experiment is None:
        return {}
    runs = client.search_runs([experiment.experiment_id], f"tags.`cutpaste.benchmark_id` = '{benchmark_id}'")
    return {r.info.run_name: r for r in runs}


def test_a_killed_driver_resumes_with_the_same_benchmark_id(stack):
    """SIGKILL the driver once one run finished and the other is mid-training; the same id again skips the
    finished run and resumes the other from its checkpoint."""
    import ray

    first, second = (f"driver-kill-{c}-seed0" for c in stack.categories)
    storage, out = stack.work / "storage-driver-kill", stack.work / "out-driver-kill"
    config = stack.config("driver-kill", steps=30, checkpoint_every=5, log_every=5)
    argv = ["--data", stack.s3_data, "--s3-endpoint", stack.endpoint, "--config", str(config)]
    # Two CPUs per worker on a two-CPU Ray: the runs train one after the other.
    argv += ["--benchmark-id", "driver-kill", "--mlflow-uri", stack.mlflow.uri, "--cpus-per-worker", "2"]
    argv += ["--out", str(out), "--storage", str(storage)]
    address = ray.get_runtime_context().gcs_address
    log = open(stack.work / "driver-kill.log", "wb")  # noqa: SIM115
    command = [sys.executable, "pipelines/full_benchmark.py", *argv, "--ray-address", address]
    driver = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def finished_and_training() -> tuple[str, str] | None:
        done = [n for n in (first, second) if any((storage / n).glob("checkpoint_*/detector.pt"))]
        runs = _mlflow_runs(stack, "driver-kill") if done else {}
        for name in done:
            other = second if name == first else first
            if runs.get(name) and runs[name].info.status == "FINISHED" and registered_checkpoints(storage / other):
                return name, other
        return None

    deadline = time.monotonic() + 600
    try:
        while (state := finished_and_training()) is None:
            assert driver.poll() is None, (stack.work / "driver-kill.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.5)
    finally:
        driver.kill()
        driver.wait()
        log.close()
    done, interrupted = state
    assert not any((storage / interrupted).glob("checkpoint_*/detector.pt")), "killed too late"
    assert _mlflow_runs(stack, "driver-kill")[interrupted].info.status == "RUNNING"

    # The second driver is a process of its own too, as a user's rerun would be.
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    printed = again.stdout
    assert again.returncode == 0, (printed + again.stderr)[-3000:]
    assert f"{done}: skipped finished earlier" in printed
    assert f"{interrupted}: skipped" not in printed
    final = next((storage / interrupted).glob("checkpoint_*/detector.pt"))
    assert Detector.load(final).meta["resumed_from_step"] > 0  # resumed, not started over
    runs = _mlflow_runs(stack, "driver-kill")
    assert {n: r.info.status for n, r in runs.items()} == {
        "driver-kill": "FINISHED",
        first: "FINISHED",
        second: "FINISHED",
    }
