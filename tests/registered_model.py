"""A detector registered as a champion in a real (sqlite-backed) MLflow registry, for the tests of what
reads models by ``models:/`` URI (batch scoring, export)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import torch
from mlflow import MlflowClient

from cutpaste.detector import Detector, embed_images
from cutpaste.model.network import build_model
from cutpaste.presets import preset
from cutpaste.scoring.gaussian import GaussianDensity
from pipelines import tracking
from pipelines.pyfunc_model import TAG_SHA256, log_detector_model


def tiny_detector(size: int, *, threshold: float, category: str) -> Detector:
    """The ``ci`` preset's network, untrained (seed 0), with a Gaussian fitted on plain grey-ish normals:
    quick to build, and its scores differ between plain and noisy images."""
    config = preset("ci").override({"image_size": size})
    torch.manual_seed(0)
    model = build_model(config).eval()
    normals = torch.randint(100, 140, (12, 3, size, size), dtype=torch.uint8)
    density = GaussianDensity.fit(embed_images(model, normals, batch_size=8, size=size))
    return Detector(model=model, density=density, threshold=threshold, config=config, category=category)


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
