"""A trained detector: encoder + Gaussian density + decision threshold + config, saved as one bundle.

The bundle is a single ``detector.pt`` written atomically, plus a readable ``detector.json`` summary.
Loading needs only the model definition, never the training code path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cutpaste import __version__
from cutpaste.atomic import atomic_torch_save, atomic_write_text
from cutpaste.config import TrainConfig
from cutpaste.density import GaussianDensity, out_of_fold_scores
from cutpaste.errors import ModelBundleError
from cutpaste.model import CutPasteNet, build_model

BUNDLE_FORMAT = 1
BUNDLE_NAME = "detector.pt"
SUMMARY_NAME = "detector.json"


def as_float_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` or float in [0, 1] -> float ``(B, 3, size, size)`` in [0, 1]."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images shaped (B, 3, H, W), got {tuple(images.shape)}")
    x = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


@torch.no_grad()
def embed_images(
    model: CutPasteNet, images: torch.Tensor, *, batch_size: int, size: int, device: torch.device | None = None
) -> torch.Tensor:
    """``(N, 3, H, W)`` -> ``(N, D)`` float32 on the CPU, in batches on ``device`` (default: the model's)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for chunk in images.split(batch_size):
        x = as_float_images(chunk.to(device, non_blocking=True), size)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(model.embed(x).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, model.feature_dim)


@dataclass
class Detector:
    model: CutPasteNet
    density: GaussianDensity
    threshold: float
    config: TrainConfig
    category: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> Detector:
        self.model.to(device)
        return self

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return embed_images(self.model, images, batch_size=self.config.eval_batch_size, size=self.config.image_size)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 or float in [0, 1], any H, W -> ``(B,)`` float64 anomaly scores."""
        return self.density.score(self.embed(images))

    def is_anomalous(self, scores: torch.Tensor) -> torch.Tensor:
        return scores >= self.threshold

    def save(self, directory: str | Path) -> Path:
        """Writes ``detector.pt`` atomically; an existing bundle is replaced only once the new one is complete."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        bundle = {
            "format": BUNDLE_FORMAT,
            "version": __version__,
            "config": self.config.to_dict(),
            "category": self.category,
            "model": {k: v.cpu() for k, v in self.model.state_dict().items()},
            "density": self.density.state_dict(),
            "threshold": self.threshold,
            "meta": self.meta,
        }
        path = directory / BUNDLE_NAME
        atomic_torch_save(bundle, path)
        summary = {k: bundle[k] for k in ("format", "version", "config", "category", "threshold", "meta")}
        summary["density"] = self.density.summary()
        atomic_write_text(json.dumps(summary, indent=2, sort_keys=True, default=str), directory / SUMMARY_NAME)
        return path

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> Detector:
        directory = Path(directory)
        path = directory / BUNDLE_NAME if directory.is_dir() else directory
        if not directory.exists():
            raise ModelBundleError(f"model directory not found: {directory}")
        if not path.is_file():
            hint = ""
            if (directory / "checkpoints").is_dir():
                hint = " (it holds an unfinished training run: rerun `cutpaste train` with the same --out to resume)"
            raise ModelBundleError(f"no {BUNDLE_NAME} in {directory}{hint}")
        try:
            bundle = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ModelBundleError(f"{path} is unreadable or half written ({type(exc).__name__}: {exc})") from None
        if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
            found = bundle.get("format") if isinstance(bundle, dict) else type(bundle).__name__
            raise ModelBundleError(
                f"{path} has bundle format {found!r}; this cutpaste {__version__} reads format {BUNDLE_FORMAT}"
            )
        try:
            config = TrainConfig.from_dict({k: v for k, v in bundle["config"].items()}, source=str(path))
            # The weights are in the bundle: never look for pretrained files when loading.
            model = build_model(config.override({"pretrained": None}))
            model.load_state_dict(bundle["model"])
            density = GaussianDensity.from_state_dict(bundle["density"])
        except (KeyError, RuntimeError) as exc:
            raise ModelBundleError(f"{path} does not match this version's model: {exc}") from None
        model.eval().to(device)
        return cls(
            model=model,
            density=density,
            threshold=float(bundle["threshold"]),
            config=config,
            category=str(bundle.get("category", "")),
            meta=dict(bundle.get("meta", {})),
        )


def fit_detector(
    model: CutPasteNet,
    train_images: torch.Tensor,
    config: TrainConfig,
    *,
    category: str = "",
    meta: dict[str, Any] | None = None,
) -> Detector:
    """Fits the density on the normal training images and calibrates the threshold without test data.

    The threshold is the ``config.threshold_quantile`` quantile of out-of-fold scores of the training
    images, so about ``1 - q`` of normal images are flagged at test time.
    """
    features = embed_images(model, train_images, batch_size=config.eval_batch_size, size=config.image_size)
    density = GaussianDensity.fit(features)
    calibration = out_of_fold_scores(features, seed=config.seed)
    threshold = float(torch.quantile(calibration, config.threshold_quantile))
    return Detector(
        model=model.eval(),
        density=density,
        threshold=threshold,
        config=config,
        category=category,
        meta=dict(meta or {}),
    )
