"""Logs the detector as an MLflow pyfunc model with models-from-code (:mod:`pipelines.served_model`).

MLflow runs ``served_model.py`` to build the model at load time; nothing of ours is pickled, and the
bundle's SHA-256 (``model_config["sha256"]``) is checked before the bundle is read. The bundle travels as
the ``detector`` artifact (``detector.pt`` with its ``detector.json`` record, or an ensemble directory)
and the library as code, so a served model needs neither Ray nor this repository.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import mlflow
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

import cutpaste
from cutpaste.detector import BUNDLE_NAME, SUMMARY_NAME
from cutpaste.ensemble import ENSEMBLE_MANIFEST, bundle_digest

PIP_REQUIREMENTS = ["torch", "torchvision", "numpy", "pillow", "scikit-learn", "pandas"]
MODEL_CODE = Path(__file__).with_name("served_model.py")
TAG_SHA256 = "cutpaste.sha256"  # on each registry version: the digest its loaders insist on


def signature() -> ModelSignature:
    """Outputs and params only. An input TensorSpec would make MLflow cast a JSON body to its dtype before
    the model sees it (floats in [0, 1] silently truncated to 0 as uint8); the model checks its input."""
    return ModelSignature(
        inputs=None,
        outputs=Schema(
            [
                ColSpec("double", "score"),
                ColSpec("double", "threshold"),
                ColSpec("boolean", "anomalous"),
                ColSpec(Array(Array(DataType.float)), "map", required=False),
            ]
        ),
        params=ParamSchema([ParamSpec("threshold", "double", None), ParamSpec("maps", "boolean", False)]),
    )


def log_detector_model(bundle_dir: Path, *, run_id: str, name: str = "model") -> tuple[str, str]:
    """Logs the bundle in ``bundle_dir`` as a pyfunc model into ``run_id``; returns its ``models:/`` URI and
    the bundle's SHA-256 (what the registry version is tagged with).

    MLflow 3 stores a logged model as its own entity, so the URI to register is the one MLflow returns,
    not a path under the run's artifacts.
    """
    with tempfile.TemporaryDirectory(prefix="cutpaste-model-") as staging:
        artifact = _bundle_artifact(bundle_dir, Path(staging))
        digest = bundle_digest(artifact)
        with mlflow.start_run(run_id=run_id, nested=True), warnings.catch_warnings():
            # MLflow suggests an input example: the model checks its input itself (served_model.py).
            warnings.filterwarnings("ignore", message=".*input example", category=UserWarning)
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=str(MODEL_CODE),
                artifacts={"detector": str(artifact)},
                model_config={"sha256": digest},
                code_paths=[str(Path(cutpaste.__file__).parent)],
                signature=signature(),
                pip_requirements=PIP_REQUIREMENTS,
            )
    return info.model_uri, digest


def _bundle_artifact(bundle_dir: Path, staging: Path) -> Path:
    """An ensemble travels as its whole directory; a single detector as its bundle and its digest record
    only (a run directory also holds checkpoints and logs the model does not need)."""
    if (bundle_dir / ENSEMBLE_MANIFEST).is_file():
        return bundle_dir
    if not (bundle_dir / BUNDLE_NAME).is_file():
        raise FileNotFoundError(f"no {BUNDLE_NAME} or {ENSEMBLE_MANIFEST} in {bundle_dir}")
    target = staging / "detector"
    target.mkdir()
    for name in (BUNDLE_NAME, SUMMARY_NAME):
        if (bundle_dir / name).is_file():
            shutil.copy2(bundle_dir / name, target / name)
    return target
