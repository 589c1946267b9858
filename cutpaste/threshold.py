"""The decision threshold, calibrated on out-of-fold scores of normal training images, with the
false-positive rate it is expected to give and how sure that expectation is.

About 200 training images calibrate a category. At the 99th percentile two images decide the
threshold, so the false-positive rate a user will see can be far from 1 %: the bootstrap interval
says how far. A user sets the rate they want (``target_fpr``) rather than a quantile.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
