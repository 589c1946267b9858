"""Gaussian densities over a grid of patch features: one per position, or one shared by all positions.

Aligned objects (a bottle is always in the same place) get a Gaussian per grid position, so a normal
feature at the wrong place still stands out; textures and objects that rotate share one Gaussian.
57 x 57 full 512-d covariances would take 3.4 GB, so per-position Gaussians live in the top
``dim`` principal directions of the (L2-normalised) training patch features. Ledoit-Wolf shrinkage
is computed for all positions at once (the same estimator as :class:`sklearn.covariance.LedoitWolf`,
batched on the device: 3249 positions in one call instead of 3249 sklearn fits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from cutpaste.config import LOCAL_DENSITIES
from cutpaste.errors import ConfigError

Layout = Literal["per_location", "shared", "knn"]
# MVTec objects photographed in a fixed pose; hazelnut, metal_nut and screw lie at random
# rotations and, like the textures, share one Gaussian (the paper's grouping for localization).
ALIGNED_OBJECTS = frozenset({"bottle", "cable", "capsule", "pill", "toothbrush", "transistor", "zipper"})
# At most this many patch features fit a shared Gaussian or the projection (a random subset).
MAX_SHARED_SAMPLES = 50_000
RIDGE_FRACTION = 0.01


def resolve_layout(setting: str, category: str) -> Layout:
    """``auto``: per position for aligned MVTec objects, shared for textures, unaligned and unknown categories."""
    if setting == "auto":
        return "per_location" if category in ALIGNED_OBJECTS else "shared"
    if setting not in LOCAL_DENSITIES:
        raise ConfigError(f"density layout: unknown {setting!r}; choose one of {', '.join(LOCAL_DENSITIES)}")
    return setting  # type: ignore[return-value]


def ledoit_wolf(samples: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Ledoit-Wolf estimates for a batch of sample sets ``(L, N, K)`` -> mean ``(L, K)``,
    covariance ``(L, K, K)`` and shrinkage ``(L,)``; matches sklearn's ``LedoitWolf().fit`` per set."""
    x = samples.double()
    n, k = x.shape[1], x.shape[2]
    mean = x.mean(1)
    centred = x - mean[:, None]
    empirical = centred.transpose(1, 2) @ centred / n
    squared = centred.square()
    variances = squared.sum(1) / n  # (L, K)
    mu = variances.sum(-1) / k
    beta_sum = (squared.transpose(1, 2) @ squared).sum((1, 2))
    delta_sum = (centred.transpose(1, 2) @ centred).square().sum((1, 2)) / n**2
    beta = (beta_sum / n - delta_sum) / (k * n)
    delta = (delta_sum - 2.0 * mu * variances.sum(-1) + k * mu.square()) / k
    beta = torch.minimum(beta, delta)
    shrinkage = torch.where(beta == 0, torch.zeros_like(beta), beta / delta.clamp_min(torch.finfo(x.dtype).tiny))
    eye = torch.eye(k, dtype=x.dtype, device=x.device)
    covariance = (1.0 - shrinkage)[:, None, None] * empirical + (shrinkage * mu)[:, None, None] * eye
    return mean, covariance, shrinkage


@dataclass
class LocalDensity:
    """Gaussians over patch features ``(N, L, D)`` with ``L = grid * grid`` positions.

    per_location: ``center (D,)`` and ``basis (D, K)`` project features; ``mean (L, K)``,
    ``precision (L, K, K)``. shared: no projection; ``mean (1, D)``, ``precision (1, D, D)``.
    """

    layout: Layout
    grid: int
    mean: Tensor
    precision: Tensor
    shrinkage: Tensor
    center: Tensor | None = None
    basis: Tensor | None = None

    @classmethod
    def fit(cls, features: Tensor, *, layout: Layout, grid: int, dim: int = 64, seed: int = 0) -> LocalDensity:
        """``features``: ``(N, L, D)`` training patch features (N >= 2 images)."""
        n, positions, width = features.shape
        if positions != grid * grid:
            raise ValueError(f"features have {positions} positions, a {grid}x{grid} grid has {grid * grid}")
        if n < 2:
            raise ValueError(f"need patch features of at least 2 images, got {n}")
        x = F.normalize(features.float(), dim=-1)
        generator = torch.Generator().manual_seed(seed)
        flat = x.reshape(-1, width)
        if flat.shape[0] > MAX_SHARED_SAMPLES:
            pick = torch.randperm(flat.shape[0], generator=generator)[:MAX_SHARED_SAMPLES].to(flat.device)
            flat = flat[pick]
        if layout == "shared":
            mean, covariance, shrinkage = ledoit_wolf(flat[None])
            return cls(layout, grid, mean.float(), _inverse(covariance), shrinkage.float())
        k = min(dim, width)
        center = flat.double().mean(0)
        centred = flat.double() - center
        _, vectors = torch.linalg.eigh(centred.T @ centred)
        basis = vectors[:, -k:].flip(-1)  # the top-k principal directions, largest first
        projected = ((x.double() - center) @ basis).transpose(0, 1)  # (L, N, K)
        mean, covariance, shrinkage = ledoit_wolf(projected)
        # A position that looks the same in every training image (a black corner) has zero variance and
        # Ledoit-Wolf cannot help it; a ridge of 1 % of the average variance keeps every Gaussian proper.
        variance = covariance.diagonal(dim1=-2, dim2=-1).mean(-1)
        ridge = RIDGE_FRACTION * variance.mean().clamp_min(torch.finfo(covariance.dtype).tiny)
        covariance = covariance + ridge * torch.eye(k, dtype=covariance.dtype, device=covariance.device)
        return cls(layout, grid, mean.float(), _inverse(covariance), shrinkage.float(), center.float(), basis.float())

    def score(self, features: Tensor) -> Tensor:
        """``(N, L, D)`` -> ``(N, L)`` Mahalanobis distances (float32, on the features' device)."""
        device = features.device
        x = F.normalize(features.float(), dim=-1)
        if self.basis is not None:
            x = (x - self.center.to(device)) @ self.basis.to(device)
        delta = x - self.mean.to(device)
        precision = self.precision.to(device)
        if self.layout == "shared":
            squared = ((delta @ precision[0]) * delta).sum(-1)
        else:
            squared = torch.einsum("nlk,lkj,nlj->nl", delta, precision, delta)
        return squared.clamp_min(0).sqrt()

    def state_dict(self) -> dict:
        return {
            "layout": self.layout,
            "grid": self.grid,
            "mean": self.mean.cpu(),
            "precision": self.precision.cpu(),
            "shrinkage": self.shrinkage.cpu(),
            "center": None if self.center is None else self.center.cpu(),
            "basis": None if self.basis is None else self.basis.cpu(),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> LocalDensity:
        return cls(**state)

    def summary(self) -> dict[str, float | str]:
        return {
            "local_layout": self.layout,
            "local_grid": float(self.grid),
            "local_dim": float(self.mean.shape[-1]),
            "local_shrinkage_mean": float(self.shrinkage.float().mean()),
        }


def _inverse(covariance: Tensor) -> Tensor:
    """Precision matrices in float32; shrinkage keeps the covariances positive definite."""
    return torch.linalg.inv(covariance).float()
