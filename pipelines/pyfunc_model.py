"""The detector as an MLflow pyfunc model: images in, anomaly scores and verdicts out.

Input: a uint8 array ``(B, H, W, 3)`` (or one ``(H, W, 3)`` image), any H and W; images are resized to
the detector's size exactly as ``cutpaste predict`` does. Output: a DataFrame with ``score``,
``threshold`` and ``anomalous`` per image; with ``params={"maps": True}`` also ``map``, the anomaly map
at the detector's size (dense for a patch model, GradCAM otherwise). ``params={"threshold": t}``
overrides the calibrated threshold. The bundle travels as the ``detector`` artifact and the
library as code, so a served model needs neither Ray nor this repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec

import cutpaste
from cutpaste.detector import BUNDLE_NAME
from cutpaste.ensemble import ENSEMBLE_MANIFEST, load_detector

PIP_REQUIREMENTS = ["torch", "torchvision", "numpy", "pillow", "scikit-learn", "pandas"]


def images_to_tensor(model_input: Any) -> torch.Tensor:
    """``(B, H, W, 3)`` / ``(H, W, 3)`` uint8 -> ``(B, 3, H, W)`` uint8."""
    array = np.asarray(model_input)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected uint8 images shaped (B, H, W, 3), got {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)


class CutPasteModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        # A single bundle file or an ensemble directory: both score images the same way.
        self.detector = load_detector(context.artifacts["detector"], device=device)

    def predict(self, context, model_input, params=None):  # untyped: MLflow reads hints as a schema
        params = params or {}
        threshold = params.get("threshold")
        threshold = float(self.detector.threshold if threshold is None else threshold)
        images = images_to_tensor(model_input)
        if not params.get("maps"):
            scores = self.detector.score(images).numpy()
            return pd.DataFrame({"score": scores, "threshold": threshold, "anomalous": scores >= threshold})
        if not hasattr(self.detector, "anomaly_maps"):
            raise ValueError("maps=True: this model is an ensemble, which gives scores but no anomaly maps")
        scores, maps = self.detector.anomaly_maps(images)
        scores = scores.numpy()
        return pd.DataFrame(
            {
                "score": scores,
                "threshold": threshold,
                "anomalous": scores >= threshold,
                # (S, S) per image at the detector's size: dense patch scores or GradCAM.
                "map": [m.numpy().tolist() for m in maps],
            }
        )


def signature() -> ModelSignature:
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
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


def log_detector_model(bundle_dir: Path, *, run_id: str, name: str = "model") -> str:
    """Logs the bundle in ``bundle_dir`` as a pyfunc model into ``run_id``; returns its ``models:/`` URI.

    MLflow 3 stores a logged model as its own entity, so the URI to register is the one MLflow returns,
    not a path under the run's artifacts.
    """
    if (bundle_dir / ENSEMBLE_MANIFEST).is_file():
        artifact = bundle_dir  # an ensemble travels as its whole directory
    elif (bundle_dir / BUNDLE_NAME).is_file():
        artifact = bundle_dir / BUNDLE_NAME
    else:
        raise FileNotFoundError(f"no {BUNDLE_NAME} or {ENSEMBLE_MANIFEST} in {bundle_dir}")
    library = Path(cutpaste.__file__).parent
    with mlflow.start_run(run_id=run_id, nested=True):
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=CutPasteModel(),
            artifacts={"detector": str(artifact)},
            # The class is pickled by reference to pipelines.pyfunc_model: ship that package beside the library.
            code_paths=[str(library), str(Path(__file__).parent)],
            signature=signature(),
            pip_requirements=PIP_REQUIREMENTS,
        )
    return info.model_uri
