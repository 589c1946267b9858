"""Batch scoring's model and MLflow side (driver only): resolve ``--model`` (a registry URI or a local bundle)
to the bundle's files and its pinned digest, and log the scoring run, linked to the model version.

A registered version is trusted through the digest it is tagged with (``cutpaste.sha256``): the bundle
downloaded for it must match, and so must the ``model_config`` MLflow serves it with. Scoring workers get
the files and the digest, and load them with the library's loader (weights only, digest checked again).
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric

from cutpaste.ensemble import bundle_digest
from cutpaste.errors import ModelBundleError
from cutpaste.serving.batch_scoring import ModelInfo, ScoreSummary, load_bundle_files, read_bundle_files
from pipelines import tracking
from pipelines.pyfunc_model import TAG_SHA256

EXPERIMENT = "cutpaste-batch-score"
TAG_ROLE_VALUE = "batch_score"
TAG_MODEL_NAME = "cutpaste.model_name"
TAG_MODEL_VERSION = "cutpaste.model_version"
TAG_MODEL_RUN = "cutpaste.model_run_id"
TAG_OUTPUT = "cutpaste.output"
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass
class ResolvedModel:
    files: dict[str, bytes]
    info: ModelInfo
    source_run_id: str | None = None
    model_id: str | None = None  # MLflow 3's logged model behind the version
    tags: dict[str, str] = field(default_factory=dict)


def is_registry_uri(spec: str) -> bool:
    return spec.startswith("models:/")


def resolve_model(spec: str, tracking_uri: str | None) -> ResolvedModel:
    """``models:/name@alias``, ``models:/name/<version>`` or a local bundle directory -> files and digest."""
    if not is_registry_uri(spec):
        path = Path(spec).expanduser().resolve()
        if not path.is_dir():
            raise ModelBundleError(f"--model {spec}: not a models:/ URI and not a bundle directory")
        return ResolvedModel(read_bundle_files(path), ModelInfo(str(path), "local", bundle_digest(path)))
    match = _MODELS_URI.match(spec)
    if match is None:
        raise ModelBundleError(f"--model {spec}: expected models:/<name>@<alias> or models:/<name>/<version>")
    # The models:/ download resolves through MLflow's global registry URI, not the client's: set both,
    # and put back what was there after (set_registry_uri also exports MLFLOW_REGISTRY_URI, which every
    # later MlflowClient of the process would read).
    registry_env = os.environ.get("MLFLOW_REGISTRY_URI")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    name = match["name"]
    try:
        if match["alias"]:
            version = client.get_model_version_by_alias(name, match["alias"])
        else:
            version = client.get_model_version(name, match["version"])
    except Exception as exc:
        raise ModelBundleError(
            f"--model {spec}: not in the registry at {tracking.redact_uri(tracking_uri or '')} "
            f"({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    digest = version.tags.get(TAG_SHA256)
    if not digest:
        raise ModelBundleError(f"--model {spec}: version {version.version} has no {TAG_SHA256} tag: refused")
    try:
        files, model_id = _download_detector(name, str(version.version), digest, tracking_uri)
    finally:  # the process-wide URIs set above are the download's only: leave none behind
        mlflow.set_registry_uri(registry_env)
        mlflow.set_tracking_uri(None)
        if registry_env is None:
            os.environ.pop("MLFLOW_REGISTRY_URI", None)
    return ResolvedModel(
        files,
        ModelInfo(name, str(version.version), digest),
        source_run_id=version.run_id,
        model_id=getattr(version, "model_id", None) or model_id,
    )


def _download_detector(
    name: str, version: str, digest: str, tracking_uri: str | None
) -> tuple[dict[str, bytes], str | None]:
    """The version's ``detector`` artifact, refused unless the model's own config pins the same digest; and
    the logged model's id (MLflow 3) recorded in its MLmodel."""
    with tempfile.TemporaryDirectory(prefix="cutpaste-model-") as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}", dst_path=tmp, tracking_uri=tracking_uri
            )
        )
        mlmodel = yaml.safe_load((local / "MLmodel").read_text())
        flavor = mlmodel["flavors"]["python_function"]
        pinned = (flavor.get("config") or flavor.get("model_config") or {}).get("sha256")  # MLmodel: "config"
        if pinned != digest:
            raise ModelBundleError(
                f"models:/{name}/{version}: its model_config pins SHA-256 {str(pinned)[:16]}..., the registry tag "
                f"{digest[:16]}...: refused"
            )
        detector = local / flavor["artifacts"]["detector"]["path"]
        return read_bundle_files(detector), mlmodel.get("model_id")


def check_loadable(model: ResolvedModel) -> Any:
    """Loads the bundle once in the driver (digest checked) before any worker starts: a refused model fails
    the job at once, with one message, instead of once per actor. Returns the detector (for the sample)."""
    return load_bundle_files(model.files, model.info.sha256)


def start_run(client: MlflowClient, model: ResolvedModel, *, experiment: str, run: str, params: dict) -> str:
    """The scoring run, tagged with the model's name, version and digest, and linked to its logged model."""
    experiment_id = tracking.ensure_experiment(client, experiment)
    tags = {
        tracking.TAG_ROLE: TAG_ROLE_VALUE,
        TAG_MODEL_NAME: model.info.name,
        TAG_MODEL_VERSION: model.info.version,
        TAG_SHA256: model.info.sha256,
        TAG_OUTPUT: params.get("output", ""),
    }
    if model.source_run_id:
        tags[TAG_MODEL_RUN] = model.source_run_id
    run_id = client.create_run(experiment_id, run_name=f"score-{run}", tags=tags).info.run_id
    tracking.log_params(client, run_id, params)
    if model.model_id:
        _link_logged_model(client, run_id, model.model_id)
    return run_id


def _link_logged_model(client: MlflowClient, run_id: str, model_id: str) -> None:
    """MLflow 3 shows a run's input models on the model's page; the tags above say the same in any version."""
    try:
        from mlflow.entities import LoggedModelInput

        client.log_inputs(run_id, models=[LoggedModelInput(model_id)])
    except Exception as exc:  # an older server without logged-model inputs: the tags still link them
        print(f"note: could not record the model as the run's input ({type(exc).__name__})")


def log_results(
    client: MlflowClient,
    run_id: str,
    summary: ScoreSummary,
    metrics: dict[str, float],
    threshold: float,
    sample: Any | None,
) -> None:
    """Counts, rate and throughput, the score distribution against the threshold, and the top-scored sample."""
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, float(value), now, 0) for key, value in sorted(metrics.items())])
    figure = score_distribution(summary.sample, threshold)
    try:
        client.log_figure(run_id, figure, "figures/score_distribution.png")
    finally:
        import matplotlib.pyplot as plt

        plt.close(figure)
    if sample is not None:
        client.log_image(run_id, sample, "samples/top_scored.png")
    tracking.log_json_artifact(
        client, run_id, {"metrics": metrics, "top": summary.highest()}, "summary.json", "results"
    )


def score_distribution(scores: list[float], threshold: float):
    """A histogram of this run's scores (a uniform sample of at most 50,000) with the threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6, 3.6))
    if scores:
        ax.hist(scores, bins=min(50, max(5, len(scores) // 4)), color="tab:blue", alpha=0.8)
    ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.3g}")
    ax.set(xlabel="anomaly score", ylabel="images", title=f"scores of {len(scores)} images")
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure
