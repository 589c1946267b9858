"""Out-of-fold scores: every normal training image scored by a scorer fitted without it.

In-sample scores are biased low (a Gaussian's Mahalanobis distance, a memory bank's distance to the
image's own features, zero), so a threshold picked from them would flag too many normal images at test
time. One helper serves every registered scorer, the threshold's calibration and ``image_score=auto``'s
selection alike: the folds are the same seeded parts (:func:`fold_parts`), so one image's scores always
come from scorers fitted without the same other images, and a synthetic anomaly made from a training
image is scored by the scorer fitted without that image's fold.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from cutpaste.scoring.gaussian import GaussianDensity
from cutpaste.scoring.registry import Scorer


def fold_parts(n: int, *, folds: int = 5, seed: int = 0) -> tuple[Tensor, ...]:
    """Indices of each held-out fold of ``n`` samples: a seeded permutation cut into ``folds`` parts (at
    least 2, and at least 2 samples each where ``n`` allows)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return torch.tensor_split(order, max(2, min(folds, n // 2)))


def out_of_fold(
    fit: Callable[[Tensor], Scorer],
    features: Tensor,
    *,
    folds: int = 5,
    seed: int = 0,
    device: torch.device | None = None,
    anomalies: Tensor | None = None,
    anomaly_base: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``(N, ...)`` features -> each one's score under ``fit`` applied to the other folds, on the CPU in
    the scorer's dtype; with ``anomalies`` (made from training image ``anomaly_base[i]``), their scores too."""
    n = features.shape[0]
    normal: Tensor | None = None
    anomalous: Tensor | None = None
    for part in fold_parts(n, folds=folds, seed=seed):
        keep = torch.ones(n, dtype=torch.bool)
        keep[part] = False
        scorer = fit(features[keep])
        scores = _score(scorer, features[part], device)
        if normal is None:
            normal = torch.empty((n, *scores.shape[1:]), dtype=scores.dtype)
        normal[part] = scores
        held = torch.zeros(0, dtype=torch.bool) if anomaly_base is None else torch.isin(anomaly_base, part)
        if anomalies is not None and bool(held.any()):
            scored = _score(scorer, anomalies[held], device)
            if anomalous is None:
                anomalous = torch.empty((len(anomalies), *scored.shape[1:]), dtype=scored.dtype)
            anomalous[held] = scored
    assert normal is not None
    if anomalies is not None and anomalous is None:  # none of them was made from a training image here
        anomalous = torch.empty((0, *normal.shape[1:]), dtype=normal.dtype)
    return normal, anomalous


def out_of_fold_scores(features: Tensor, *, folds: int = 5, seed: int = 0) -> Tensor:
    """``(N, D)`` embeddings -> ``(N,)`` float64 scores under the paper's Gaussian fitted without each fold."""
    return out_of_fold(GaussianDensity.fit, features, folds=folds, seed=seed)[0]


def _score(scorer: Scorer, features: Tensor, device: torch.device | None) -> Tensor:
    return scorer.score(features if device is None else features.to(device)).cpu()
