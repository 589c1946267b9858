"""The benchmark driver in-process on a local Ray: bad input fails before training, a failing run does not
stop the others and is reported in the table and in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
from mlflow import MlflowClient

from cutpaste.data.synth import generate_dataset
from pipelines.full_benchmark import main

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench") / "data"
    generate_dataset(root, categories=2, size=64, seed=5, train_count=12, test_good=4, test_defect_per_type=2)
    return root


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    yield
    ray.shutdown()


def test_bad_input_fails_before_anything_starts(data, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--data", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no category under" in capsys.readouterr().err
    assert main(["--data", str(data), "--categories", "synth_nothing", "--out", str(tmp_path / "o")]) == 2
    assert "synth_nothing not under" in capsys.readouterr().err
    uri = "http://127.0.0.1:9"
    assert main(["--data", str(data), "--mlflow-uri", uri, "--out", str(tmp_path / "o")]) == 2
    assert "MLflow server http://127.0.0.1:9 is unreachable" in capsys.readouterr().err
    assert (
        main(["--data", str(data), "--workers-per-run", "2", "--gpus-per-run", "1", "--out", str(tmp_path / "o")]) == 2
    )
    assert "share a GPU" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_missing_gpus_is_an_error_not_a_hang(local_ray, data, tmp_path, capsys):
    args = ["--data", str(data), "--gpus-per-run", "1", "--out", str(tmp_path / "o")]
    assert main([*args, "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert "one run needs 1 GPU" in capsys.readouterr().err


def test_a_failing_run_does_not_stop_the_others(local_ray, data, tmp_path, capsys):
    broken, healthy = sorted(p.name for p in data.iterdir() if p.is_dir())
    good_dir = data / broken / "train" / "good"
    first = sorted(good_dir.iterdir())[0]
    saved = first.read_bytes()
    first.write_bytes(b"not a png")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"preset": "ci", "steps": 4, "checkpoint_every": 2, "log_every": 2}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        code = main(
            [
                "--data",
                str(data),
                "--config",
                str(config),
                "--benchmark-id",
                "f1",
                "--mlflow-uri",
                uri,
                "--out",
                str(tmp_path / "out"),
                "--max-failures",
                "2",  # a budget it must not spend: bad data fails every attempt
            ]
        )
    finally:
        first.write_bytes(saved)
    out = capsys.readouterr().out
    assert code == 1
    table = (tmp_path / "out" / "results.md").read_text()
    assert f"| {broken} |" in table and "0 (1 failed)" in table and first.name in table
    assert f"| {healthy} |" in table
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cutpaste-benchmark").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    failed = by_name[f"f1-{broken}-seed0"]
    assert failed.info.status == "FAILED" and first.name in failed.data.tags["cutpaste.error"]
    assert failed.data.tags["cutpaste.retries"] == "0" and "DataError" in failed.data.tags["cutpaste.error"]
    assert "retrying" not in out
    finished = by_name[f"f1-{healthy}-seed0"]
    assert finished.info.status == "FINISHED"
    # Where its time went: the status board's phases, as metrics of the run.
    assert finished.data.metrics["seconds_training"] > 0 and finished.data.metrics["seconds_queued"] > 0
    assert by_name["f1"].info.status == "FAILED"
    assert f"f1-{broken}-seed0: failed" in out


@pytest.mark.slow
def test_two_ddp_workers_train_one_run(local_ray, data, tmp_path):
    """``--workers-per-run 2`` on CPU: a gloo process group, DDP-wrapped model, rank 0 evaluates and logs."""
    category = sorted(p.name for p in data.iterdir() if p.is_dir())[1]
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"preset": "ci", "steps": 6, "checkpoint_every": 3, "log_every": 3}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--data", str(data), "--categories", category, "--config", str(config), "--workers-per-run", "2"]
    args += ["--system-metrics"]
    code = main([*args, "--benchmark-id", "ddp", "--mlflow-uri", uri, "--out", str(tmp_path / "out"), "--no-register"])
    assert code == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cutpaste-benchmark").experiment_id])
    child = next(r for r in runs if r.info.run_name == f"ddp-{category}-seed0")
    assert child.info.status == "FINISHED" and 0 <= child.data.metrics["image_auroc"] <= 1
    # One loss record per log interval: rank 0 alone reports them, not once per worker.
    assert [m.step for m in client.get_metric_history(child.info.run_id, "loss")] == [3, 6]
    # --system-metrics: the training process's CPU and memory at each logged step, through the driver.
    memory = client.get_metric_history(child.info.run_id, "system/memory_rss_mb")
    assert [m.step for m in memory] == [3, 6] and all(m.value > 50 for m in memory)
    assert "system/cpu_percent" in child.data.metrics
