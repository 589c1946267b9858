"""Gaussian density estimation (GDE) on L2-normalised features, scored by Mahalanobis distance.

Training sets are small (60-400 images) against 512-d features, so the sample covariance is
singular; Ledoit-Wolf shrinkage towards a scaled identity keeps the precision matrix stable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.covariance import LedoitWolf


def _l2_normalise(features: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(features.double(), dim=-1)


@dataclass
class GaussianDensity:
    """Mean ``(D,)``, covariance and precision ``(D, D)`` in float64, and the shrinkage used."""

    mean: torch.Tensor
    covariance: torch.Tensor
    precision: torch.Tensor
    shrinkage: float

    @classmethod
    def fit(cls, features: torch.Tensor) -> GaussianDensity:
        """``features``: ``(N, D)``, N >= 2. Normalisation happens here, not in the caller."""
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"GaussianDensity.fit needs (N>=2, D) features, got {tuple(features.shape)}")
        x = _l2_normalise(features.detach().cpu()).numpy()
        estimator = LedoitWolf(assume_centered=False).fit(x)
        return cls(
            mean=torch.from_numpy(estimator.location_.copy()),
            covariance=torch.from_numpy(estimator.covariance_.copy()),
            precision=torch.from_numpy(estimator.precision_.copy()),
            shrinkage=float(estimator.shrinkage_),
        )

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` -> ``(N,)`` Mahalanobis distance; larger means more anomalous."""
        if features.shape[-1] != self.dim:
            raise ValueError(f"features have dimension {features.shape[-1]}, the density {self.dim}")
        delta = _l2_normalise(features.detach().cpu()) - self.mean
        squared = torch.einsum("nd,de,ne->n", delta, self.precision, delta)
        return squared.clamp_min(0).sqrt()

    def state_dict(self) -> dict[str, torch.Tensor | float]:
        return {
            "mean": self.mean,
            "covariance": self.covariance,
            "precision": self.precision,
            "shrinkage": self.shrinkage,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> GaussianDensity:
        return cls(
            mean=state["mean"].double(),
            covariance=state["covariance"].double(),
            precision=state["precision"].double(),
            shrinkage=float(state["shrinkage"]),
        )

    def summary(self) -> dict[str, float]:
        """Scalars worth tracking: shrinkage, log-determinant and trace of the covariance."""
        sign, logdet = np.linalg.slogdet(self.covariance.numpy())
        return {
            "gde_shrinkage": self.shrinkage,
            "gde_logdet": float(logdet) if sign > 0 else float("nan"),
            "gde_trace": float(self.covariance.trace()),
            "gde_dim": float(self.dim),
        }
