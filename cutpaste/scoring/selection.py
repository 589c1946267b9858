"""``image_score=auto``: a detector chooses its own image score, on validation made from its training images.

Which score serves best differs by category: at the ``short`` budget the feature-map Gaussians lead on
the aligned MVTec objects, the paper's global Gaussian or the k-NN memory bank on textures
(``bench/results/quality.md``); on a texture the bank's image score gains from discounting the image's
own typical patch (``feature_score=max-median``), on an object it loses. A lookup by category name
cannot know a category it has not seen, so the detector decides from data, never from a test split: the
training images are split into folds, and densities fitted without a fold score that fold's images and
synthetic anomalies made from them (the kinds in :data:`cutpaste.anomalies.kinds.VOTING_KINDS`, which
copy no training view). The candidate with the highest mean AUROC over those kinds wins; the name lookup's
choice (:func:`prior_choice`) wins ties, and wins outright when there are too few images to split. The
encoder has trained on these images, which makes every candidate's normal scores a little lower alike;
the ranking, not the level, is what is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

from cutpaste.anomalies.kinds import VOTING_KINDS
from cutpaste.config import TrainConfig
from cutpaste.model.network import CutPasteNet, as_float_images
from cutpaste.scoring.choice import Scoring
from cutpaste.scoring.feature_maps import fit_feature_scorer, grid_image_scores, image_and_grid_features
from cutpaste.scoring.folds import out_of_fold
from cutpaste.scoring.gaussian import GaussianDensity
from cutpaste.scoring.grid_gaussians import ALIGNED_OBJECTS, resolve_layout
from cutpaste.scoring.registry import Scorer

# Below this many training images the folds are too small to rank anything; the lookup decides.
MIN_IMAGES = 10
# Anomalies are made from at most this many training images per kind (a seeded subset).
MAX_ANOMALY_BASES = 128


@dataclass(frozen=True)
class Candidate:
    """One way to score an image: its image score and feature-map scorer, and the name tables and logs
    show. ``feature_density="auto"`` keeps the config's own setting."""

    name: str
    image_score: str
    feature_density: str
    feature_score: str = "max"


# The lookup's choices first: on a tie the earlier candidate wins. Decided on 3 seeds x 4 real categories
# at `short` (docs/decisions.md, each candidate against the list without it): knn, knn-global and
# knn-relative-global were never chosen (leaving any out changed no score) and leaving out local-global
# raised validation (-0.0005): those four left the list. The three kept each added on average (local
# +0.003, global +0.003, knn-relative +0.001); leaving several out at once was not measured.
CANDIDATES: tuple[Candidate, ...] = (
    Candidate("local", "local", "auto"),
    Candidate("global", "global", "auto"),
    Candidate("knn-relative", "local", "knn", "max-median"),
)


def prior_choice(config: TrainConfig, category: str) -> str:
    """The name lookup: ``local`` for the aligned MVTec objects, where the quality matrix's validation
    preferred it at the short budget, ``global`` (the paper's) elsewhere and for patch models."""
    if not _has_feature_maps(config):
        return "global"
    return "local" if category in ALIGNED_OBJECTS else "global"


def can_select(config: TrainConfig, n_images: int) -> bool:
    return _has_feature_maps(config) and n_images >= MIN_IMAGES


def _has_feature_maps(config: TrainConfig) -> bool:
    """An image-level model on a ResNet: the only kind with stage feature maps to score."""
    return not config.patch_size and config.backbone.startswith("resnet")


@dataclass
class Selection:
    """The chosen candidate; every candidate's validation AUROC (the mean over the ``kinds`` that rank, and
    per kind); how many normal and anomalous images it rests on."""

    chosen: Candidate
    auroc: dict[str, float]
    per_kind: dict[str, dict[str, float]]
    kinds: list[str]
    normals: int
    anomalies: int

    @property
    def maps_from(self) -> Candidate:
        """The candidate whose feature-map scorer draws the anomaly maps: the chosen one, or where that is
        the global score (which has no map), the best-ranked candidate with one."""
        if self.chosen.image_score != "global":
            return self.chosen
        with_maps = [c for c in CANDIDATES if c.image_score != "global" and c.name in self.auroc]
        return max(with_maps, key=lambda c: self.auroc[c.name], default=self.chosen)

    def scoring(self, config: TrainConfig) -> Scoring:
        """What the detector scores with: the chosen image score, and the feature-map scorer of the map's
        candidate (``feature_density="auto"`` keeps the config's own layout)."""
        maps = self.maps_from
        density = config.feature_density if maps.feature_density == "auto" else maps.feature_density
        return Scoring(self.chosen.image_score, density, maps.feature_score, chosen_by="validation")

    def to_dict(self) -> dict:
        return {
            "chosen": self.chosen.name,
            "maps_from": self.maps_from.name,
            "val_auroc": self.auroc,
            "val_auroc_per_kind": self.per_kind,
            "kinds_ranked_on": self.kinds,
            "normals": self.normals,
            "anomalies": self.anomalies,
        }


@torch.no_grad()
def select_image_score(
    model: CutPasteNet,
    train_images: Tensor,
    config: TrainConfig,
    *,
    category: str = "",
    folds: int = 5,
    features: tuple[Tensor, Tensor] | None = None,
) -> Selection:
    """Cross-fitted validation of every candidate in :data:`CANDIDATES` on ``train_images``; ``features``
    are their :func:`~cutpaste.scoring.feature_maps.image_and_grid_features` where the caller has them."""
    device = next(model.parameters()).device
    images = _as_uint8(train_images, config.image_size)
    n = images.shape[0]
    generator = torch.Generator().manual_seed(config.seed)
    bases = torch.randperm(n, generator=generator)[:MAX_ANOMALY_BASES]
    made = [make(images[bases], generator)[0] for make in VOTING_KINDS.values()]
    kinds = [kind for kind in VOTING_KINDS for _ in range(len(bases))]
    anomaly_base = bases.repeat(len(made))

    train_features = features or image_and_grid_features(model, train_images, config)
    anomaly_features = image_and_grid_features(model, torch.cat(made), config)
    normal, anomalous = _cross_fitted_scores(
        train_features, anomaly_features, anomaly_base, config, category=category, folds=folds, device=device
    )

    labels = [0] * n + [1] * len(bases)
    of_kind = {kind: torch.tensor([k == kind for k in kinds]) for kind in VOTING_KINDS}
    per_kind: dict[str, dict[str, float]] = {}
    for candidate in CANDIDATES:
        scores = _candidate_scores(candidate, normal, anomalous)
        per_kind[candidate.name] = {
            kind: float(roc_auc_score(labels, torch.cat([scores[:n], scores[n:][mask]]).numpy()))
            for kind, mask in of_kind.items()
        }
    used = list(VOTING_KINDS)
    auroc = {name: sum(values[k] for k in used) / len(used) for name, values in per_kind.items()}
    prior = prior_choice(config, category)
    ranked = sorted(CANDIDATES, key=lambda c: (-auroc[c.name], c.name != prior, CANDIDATES.index(c)))
    return Selection(
        chosen=ranked[0], auroc=auroc, per_kind=per_kind, kinds=used, normals=n, anomalies=len(anomaly_base)
    )


def _cross_fitted_scores(
    train: tuple[Tensor, Tensor],
    anomalies: tuple[Tensor, Tensor],
    anomaly_base: Tensor,
    config: TrainConfig,
    *,
    category: str,
    folds: int,
    device: torch.device,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Out-of-fold scores of the normal images and of the anomalies (each scored by densities fitted
    without its base image's fold): the global Gaussian's ``(N, 1)``, and every position's ``(N, G * G)``
    for the configured feature-map layout (``auto``) and the memory bank (``knn``), reduced per candidate."""
    (embeddings, grid), (a_embeddings, a_grid) = train, anomalies
    layouts = {"auto": resolve_layout(config.feature_density, category), "knn": "knn"}
    common = {"folds": folds, "seed": config.seed, "anomaly_base": anomaly_base}  # the detector's folds
    normal, anomalous = out_of_fold(lambda x: GaussianDensity.fit(x), embeddings, anomalies=a_embeddings, **common)
    normal, anomalous = {"global": normal.double()[:, None]}, {"global": anomalous.double()[:, None]}
    for key, layout in layouts.items():

        def fit(x: Tensor, layout: str = layout) -> Scorer:
            return fit_feature_scorer(x.to(device), layout, config)

        n, a = out_of_fold(fit, grid, anomalies=a_grid, device=device, **common)
        normal[key], anomalous[key] = n.flatten(1).double(), a.flatten(1).double()
    return normal, anomalous


def _candidate_scores(candidate: Candidate, normal: dict[str, Tensor], anomalous: dict[str, Tensor]) -> Tensor:
    """Normal then anomalous image scores of one candidate, from the position scores its layout gave."""
    if candidate.image_score == "global":
        return torch.cat([normal["global"][:, 0], anomalous["global"][:, 0]])
    key = "knn" if candidate.feature_density == "knn" else "auto"
    return torch.cat([grid_image_scores(part[key], candidate.feature_score) for part in (normal, anomalous)])


def _as_uint8(images: Tensor, size: int) -> Tensor:
    """Training images as the anomaly generators take them: uint8, square, at the detector's size."""
    if images.dtype == torch.uint8 and images.shape[-2:] == (size, size):
        return images
    return as_float_images(images, size).clamp(0, 1).mul(255).round().to(torch.uint8)
