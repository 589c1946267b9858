"""Floors a trained detector must beat, scored exactly like the detector.

- pixel statistics: per-image channel mean and std, Mahalanobis distance to the training images';
- an untrained encoder: the same network and Gaussian density with random-init weights. On MVTec
  bottle at 128 px this already reaches about 0.95 image AUROC, so it is the honest floor.
"""

from __future__ import annotations

import torch

from cutpaste.config import TrainConfig
from cutpaste.detector import Detector
from cutpaste.fit import fit_detector
from cutpaste.model.network import build_model


def pixel_statistics(images: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` uint8 -> ``(N, 6)``: per-channel mean and standard deviation."""
    x = images.float().div(255).flatten(2)
    return torch.cat([x.mean(-1), x.std(-1)], dim=1)


def pixel_statistics_scores(train_images: torch.Tensor, test_images: torch.Tensor) -> torch.Tensor:
    """Anomaly scores from global colour statistics alone; no L2 normalisation (scale carries the signal)."""
    train, test = pixel_statistics(train_images).double(), pixel_statistics(test_images).double()
    mean = train.mean(0)
    covariance = torch.cov(train.T) + 1e-6 * torch.eye(train.shape[1], dtype=torch.float64)
    delta = test - mean
    return torch.einsum("nd,de,ne->n", delta, torch.linalg.inv(covariance), delta).sqrt()


def untrained_detector(config: TrainConfig, train_images: torch.Tensor, *, category: str = "") -> Detector:
    """The detector the training run would start from (same seed, same architecture), untrained."""
    torch.manual_seed(config.seed)
    model = build_model(config)
    return fit_detector(model, train_images, config, category=category, meta={"untrained": True})


__all__ = ["pixel_statistics_scores", "untrained_detector"]
