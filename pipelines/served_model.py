"""The served detector, as MLflow models-from-code: MLflow runs this file to build the model, so loading a
registered model unpickles nothing of ours (``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`` holds).

Input: a uint8 array ``(B, H, W, 3)`` (or one ``(H, W, 3)`` image; in JSON, integers 0..255), any H and
W; images are resized to the detector's size exactly as ``cutpaste predict`` does. Output: a DataFrame with ``score``,
``threshold`` and ``anomalous`` per image; with ``params={"maps": True}`` also ``map``, the anomaly map at
the detector's size. ``params={"threshold": t}`` overrides the calibrated threshold.

The bundle travels as the ``detector`` artifact, and its SHA-256 as ``model_config["sha256"]``: a bundle
that does not match is refused before it is read. This file imports only the library (shipped with the
model as code), so a serving host needs neither Ray nor this repository.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from cutpaste.ensemble import load_detector


def images_to_tensor(model_input: Any) -> torch.Tensor:
    """``(B, H, W, 3)`` / ``(H, W, 3)`` 8-bit pixels -> ``(B, 3, H, W)`` uint8; anything else is refused.

    JSON has no uint8: a REST body arrives as int64 (accepted when every value is 0..255) or float64
    (refused: images scaled to [0, 1] would otherwise be truncated to black without a word).
    """
    try:
        array = np.asarray(model_input)
    except ValueError as exc:  # ragged nesting
        raise _bad_input(f"expected images shaped (B, H, W, 3), got ragged input ({exc})") from None
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3 or 0 in array.shape:
        raise _bad_input(f"expected images shaped (B, H, W, 3), got shape {array.shape}")
    if array.dtype != np.uint8:
        if array.dtype.kind not in "iu":
            raise _bad_input(f"expected 8-bit pixel values (uint8, or integers 0..255), got {array.dtype}")
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise _bad_input(f"expected pixel values 0..255, got values from {low} to {high}")
        array = array.astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)


def _bad_input(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)  # a 400 with this message when served


class CutPasteModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        expected = (context.model_config or {}).get("sha256")
        if not expected:
            raise MlflowException("this model records no SHA-256 of its detector (model_config['sha256']): refused")
        # A single bundle or an ensemble directory: both score images the same way.
        self.detector = load_detector(context.artifacts["detector"], device=device, expected_sha256=expected)

    # np.ndarray is a hint MLflow builds no schema from: this model checks its input itself (images_to_tensor).
    def predict(self, context, model_input: np.ndarray, params=None):
        params = params or {}
        threshold = params.get("threshold")
        threshold = float(self.detector.threshold if threshold is None else threshold)
        images = images_to_tensor(model_input)
        if not params.get("maps"):
            scores = self.detector.score(images).numpy()
            return pd.DataFrame({"score": scores, "threshold": threshold, "anomalous": scores >= threshold})
        if not hasattr(self.detector, "anomaly_maps"):
            raise _bad_input("maps=True: this model is an ensemble, which gives scores but no anomaly maps")
        scores, maps = self.detector.anomaly_maps(images)
        scores = scores.numpy()
        return pd.DataFrame(
            {
                "score": scores,
                "threshold": threshold,
                "anomalous": scores >= threshold,
                # (S, S) per image at the detector's size.
                "map": [m.numpy().tolist() for m in maps],
            }
        )


set_model(CutPasteModel())
