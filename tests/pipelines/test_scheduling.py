"""How many runs the driver starts at once, and where a run's time went (no Ray cluster needed)."""

import pytest

from pipelines import benchmark_queue
from pipelines.benchmark import BenchmarkConfig, runs_at_once
from pipelines.status import phase_durations


def _bench(**overrides) -> BenchmarkConfig:
    values = dict(benchmark_id="b", data="d", categories=("a",), seeds=1, mlflow_uri="sqlite:///m", out="o")
    values["storage"] = "s"
    return BenchmarkConfig(**{**values, **overrides})


@pytest.mark.parametrize(
    ("resources", "overrides", "expected"),
    [
        ({"CPU": 2.0}, {}, 3),  # two one-CPU runs fit, one more waits
        ({"CPU": 2.0}, {"cpus_per_worker": 2.0}, 2),
        ({"CPU": 16.0, "GPU": 2.0}, {"gpus_per_run": 1.0}, 3),  # GPUs bound it, not CPUs
        ({"CPU": 16.0, "GPU": 4.0}, {"gpus_per_run": 2.0, "workers_per_run": 2, "cpus_per_worker": 4.0}, 3),
        ({"CPU": 1.0}, {"cpus_per_worker": 4.0}, 1),  # nothing fits yet (autoscaling): one run asks
        ({}, {}, 1),
    ],
)
def test_runs_at_once_follows_the_cluster(monkeypatch, resources, overrides, expected):
    monkeypatch.setattr(benchmark_queue.ray, "cluster_resources", lambda: resources)
    assert runs_at_once(_bench(**overrides)) == expected


def test_phase_durations_sum_each_state_until_the_next():
    changes = [("queued", 0.0), ("training", 5.0), ("evaluating", 65.0), ("logging", 70.0), ("done", 71.5)]
    assert phase_durations(changes) == {"queued": 5.0, "training": 60.0, "evaluating": 5.0, "logging": 1.5}
    assert phase_durations([("queued", 3.0)]) == {}
    # A resumed run that trains twice adds both stretches up.
    again = [("training", 0.0), ("queued", 10.0), ("training", 12.0), ("done", 20.0)]
    assert phase_durations(again) == {"training": 18.0, "queued": 2.0}
