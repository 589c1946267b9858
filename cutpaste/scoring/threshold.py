"""The decision threshold, calibrated on out-of-fold scores of normal training images, with the
false-positive rate it is expected to give and how sure that expectation is.

About 200 training images calibrate a category. At the 99th percentile two images decide the
threshold, so the false-positive rate a user will see can be far from 1 %: the bootstrap interval
says how far. A user sets the rate they want (``target_fpr``) rather than a quantile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from cutpaste.config import TrainConfig

BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Calibration:
    """``expected_fpr``: share of out-of-fold normal scores at or above ``threshold``; ``fpr_low`` /
    ``fpr_high``: its 95 % bootstrap interval over those scores; ``samples``: how many scores."""

    threshold: float
    quantile: float
    expected_fpr: float
    fpr_low: float
    fpr_high: float
    samples: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def threshold_quantile(config: TrainConfig) -> float:
    """The quantile of normal scores the threshold sits at: ``1 - target_fpr`` when a target is set."""
    return 1.0 - config.target_fpr if config.target_fpr > 0 else config.threshold_quantile


def calibrate(scores: torch.Tensor, quantile: float, *, seed: int = 0) -> Calibration:
    """``scores`` ``(N,)`` out-of-fold anomaly scores of normal images -> the threshold at ``quantile``
    and the false-positive rate expected from it, with a seeded bootstrap interval."""
    scores = scores.detach().double().flatten().cpu()
    if scores.numel() < 2:
        raise ValueError(f"calibration needs at least 2 normal scores, got {scores.numel()}")
    threshold = float(torch.quantile(scores, quantile))
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(scores.numel(), (BOOTSTRAP_RESAMPLES, scores.numel()), generator=generator)
    rates = (scores[picks] >= threshold).double().mean(1)
    low, high = torch.quantile(rates, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return Calibration(
        threshold=threshold,
        quantile=quantile,
        expected_fpr=float((scores >= threshold).double().mean()),
        fpr_low=low,
        fpr_high=high,
        samples=scores.numel(),
    )


def false_positive_report(
    scores: Sequence[float], labels: Sequence[int], threshold: float, calibration: dict[str, Any] | None
) -> dict[str, float | int | None]:
    """The threshold's promise beside what it did: ``test_fpr``, the share of normal (label 0) test images
    scored at or above ``threshold`` (as ``anomalous`` counts them and as ``expected_fpr`` was computed),
    over ``test_fpr_normals`` images (None without any), and the calibration's expected rate with its 95 %
    interval (None for a detector saved without one). The encoder trained on the calibration images, so
    the realised rate can exceed the interval (``tests/test_threshold.py`` measures how far)."""
    normal = [s for s, y in zip(scores, labels, strict=True) if not y]
    calibration = calibration or {}
    return {
        "test_fpr": sum(s >= threshold for s in normal) / len(normal) if normal else None,
        "test_fpr_normals": len(normal),
        "expected_fpr": calibration.get("expected_fpr"),
        "expected_fpr_low": calibration.get("fpr_low"),
        "expected_fpr_high": calibration.get("fpr_high"),
    }
