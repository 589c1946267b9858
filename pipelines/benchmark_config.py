"""What every step of the benchmark driver shares: the benchmark's flags and the session of one run of it.

Kept apart from the steps (``benchmark_plan``, ``benchmark_queue``, ``benchmark_retries``,
``benchmark_results``, ``registry``) so that each can import it without importing the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlflow import MlflowClient

from cutpaste.config import TrainConfig
from cutpaste.errors import CutPasteError
from pipelines import tracking
from pipelines.status import Announcer

EXPERIMENT = "cutpaste-benchmark"
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
TAG_MODEL_URI = "cutpaste.model_uri"
# SHA-256 of the validation anomalies a run's val_auroc was read on (equal across the seeds of a category).
TAG_VALIDATION_DIGEST = "cutpaste.validation_digest"


class BenchmarkError(CutPasteError):
    """The benchmark cannot start: bad flags, unknown categories, missing resources."""


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


@dataclass
class Session:
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
