"""A detector registered as a champion in a real (sqlite-backed) MLflow registry, for the tests of what
reads models by ``models:/`` URI (batch scoring, export)."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow import MlflowClient

from cutpaste.detector import Detector
from pipelines import tracking
from pipelines.pyfunc_model import TAG_SHA256, log_detector_model


def register_champion(work: Path, detector: Detector, name: str) -> tuple[str, str]:
    """Saves ``detector`` under ``work``, logs and registers it as ``models:/<name>@champion`` with its digest
    tag, as the benchmark does; returns the tracking URI and the digest."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(tracking.ensure_experiment(client, "models", work / "artifacts")).info.run_id
    detector.save(work / "bundle")
    mlflow.set_tracking_uri(uri)
    try:
        model_uri, digest = log_detector_model(work / "bundle", run_id=run_id)
        tracking.register_champion(
            client, name, run_id, model_uri=model_uri, aliases=("champion",), tags={TAG_SHA256: digest}
        )
        tracking.finish_run(client, run_id)
    finally:
        mlflow.set_tracking_uri(None)
    return uri, digest
