"""A small sweep end to end on a local Ray: 4 trials under ASHA, every trial in MLflow, the test split out of
reach during the sweep, and the exported best config run through the benchmark and re-validated."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import ray
import torch
from mlflow import MlflowClient

from cutpaste.data.synth import generate_dataset
from cutpaste.ensemble import EnsembleDetector, load_detector
from cutpaste.evaluation.validation import validate_config
from cutpaste.presets import load_config
from pipelines import full_benchmark, tune_sweep

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
CATEGORY = "synth_disc"
# The ci preset shrunk further: 4 steps, validation scored every 2.
BASE = ["--preset", "ci", "--set", "steps=4", "--set", "checkpoint_every=2", "--set", "log_every=2"]
SPACE = {
    "variant": ["normal", "3way"],
    "learning_rate": [0.01, 0.05],
    "head_depth": [1, 2],
    "area_ratio_min": [0.02, 0.03],
    "area_ratio_max": [0.1, 0.15],
    "ensemble_size": [1],
}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep") / "data"
    generate_dataset(root, categories=[CATEGORY], size=64, seed=11, train_count=12, test_good=4, test_defect_per_type=1)
    return root


def test_small_asha_sweep(local_ray, data, tmp_path, capsys):
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    export = tmp_path / "best.json"
    test_dir = data / CATEGORY / "test"
    hidden = tmp_path / "test-split-out-of-reach"
    # Any attempt to list or read the test split during the sweep would fail the trial.
    shutil.move(test_dir, hidden)
    started = time.perf_counter()
    try:
        code = tune_sweep.main(
            [
                "--data", str(data), "--categories", CATEGORY, "--num-samples", "4", *BASE,
                "--space", str(space), "--search", "random", "--scheduler", "asha",
                "--mlflow-uri", uri, "--out", str(tmp_path / "sweep"), "--export", str(export),
                "--sweep-id", "t1", "--no-test-eval",
            ]
        )  # fmt: skip
    finally:
        shutil.move(hidden, test_dir)
    wall = time.perf_counter() - started
    out = capsys.readouterr().out
    print(f"sweep wall time {wall:.1f}s")
    assert code == 0
    assert "Trial status" in out and "best trials of synth_disc" in out

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cutpaste-sweep").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("cutpaste.role") == "sweep")
    trials = [r for r in runs if r.data.tags.get("cutpaste.role") == "trial"]
    assert parent.info.status == "FINISHED" and len(trials) == 4
    assert all(t.data.tags["mlflow.parentRunId"] == parent.info.run_id for t in trials)
    assert all(t.info.status == "FINISHED" and "val_auroc" in t.data.metrics for t in trials)
    assert {t.data.tags["cutpaste.trial_outcome"] for t in trials} <= {"finished", "stopped early"}
    history = client.get_metric_history(trials[0].info.run_id, "val_auroc")
    assert [m.step for m in history][:2] == [2, 4]
    assert f"best.val_auroc.{CATEGORY}" in parent.data.metrics

    # The export is a preset difference that both load_config and the benchmark read.
    difference = json.loads(export.read_text())
    summary = json.loads(export.with_suffix(".summary.json").read_text())
    assert difference["preset"] == "ci" and difference["steps"] == 4
    config = load_config(export)
    assert config.variant in ("normal", "3way") and 0.01 <= config.learning_rate <= 0.05
    # Retraining the chosen config reproduces its validation score (same seed, same split, CPU, and one
    # thread like the trial's Ray worker: at 4 steps scores nearly tie, and another thread count's
    # float rounding can swap a pair of a dozen validation images).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rerun = validate_config(config, data, CATEGORY, device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert rerun.metrics["val_auroc"] == pytest.approx(summary["validation_val_auroc"], abs=0.05)

    code = full_benchmark.main(
        [
            "--data", str(data), "--categories", CATEGORY, "--config", str(export), "--benchmark-id", "after-sweep",
            "--mlflow-uri", uri, "--out", str(tmp_path / "bench"), "--no-register", "--seeds", "2", "--ensemble", "2",
        ]
    )  # fmt: skip
    assert code == 0
    assert f"| {CATEGORY} |" in (tmp_path / "bench" / "results.md").read_text()
    # The two seeds also form one ensemble: its own row, bundle and MLflow run.
    rows = json.loads((tmp_path / "bench" / "ensembles.json").read_text())
    assert rows[0]["status"] == "finished" and rows[0]["members"] == 2
    ensemble = load_detector(tmp_path / "bench" / "ensembles" / CATEGORY)
    assert isinstance(ensemble, EnsembleDetector) and len(ensemble.members) == 2
    runs = client.search_runs([client.get_experiment_by_name("cutpaste-benchmark").experiment_id])
    assert any(r.data.tags.get("cutpaste.role") == "ensemble" and r.info.status == "FINISHED" for r in runs)
