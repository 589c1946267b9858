"""Fitting a detector on a trained encoder: its scorers on the normal training images, and a threshold
calibrated on out-of-fold scores of those images, never on test data.

Three kinds: the image model scored by the paper's Gaussian on the pooled embedding; the image model
with feature-map scorers (``image_score`` local, auto's choice, or ``map_scorer=local`` for the maps of a
global score); the patch model, whose
grid scorer draws dense anomaly maps. Every out-of-fold score comes from
:func:`cutpaste.scoring.folds.out_of_fold` and every scorer from the registry
(:mod:`cutpaste.scoring.registry`).
"""

from __future__ import annotations

from typing import Any

import torch

from cutpaste.config import TrainConfig
from cutpaste.detector import Detector, _patch_features, _patch_image_scores, _pixel_maps, embed_images
from cutpaste.model.network import CutPasteNet
from cutpaste.model.patches import grid_size
from cutpaste.scoring.choice import Scoring
from cutpaste.scoring.feature_maps import fit_feature_scorer, grid_image_scores, image_and_grid_features
from cutpaste.scoring.folds import out_of_fold, out_of_fold_scores
from cutpaste.scoring.gaussian import GaussianDensity
from cutpaste.scoring.grid_gaussians import resolve_layout
from cutpaste.scoring.registry import Scorer, fit_scorer
from cutpaste.scoring.selection import can_select, prior_choice, select_image_score
from cutpaste.scoring.threshold import calibrate, threshold_quantile


def fit_detector(
    model: CutPasteNet,
    train_images: torch.Tensor,
    config: TrainConfig,
    *,
    category: str = "",
    meta: dict[str, Any] | None = None,
) -> Detector:
    """Fits the density on the normal training images and calibrates the threshold without test data.

    The threshold is the ``threshold_quantile`` (or ``1 - target_fpr``) quantile of out-of-fold scores
    of the training images, so about that share of normal images is flagged at test time; ``meta``
    records those scores (``oof_scores``, what an ensemble standardises a member with) and the
    calibration with its expected false-positive rate and bootstrap interval (``calibration``).
    """
    if config.patch_size:
        return _fit_patch_detector(model, train_images, config, category=category, meta=meta)
    scoring, meta, features = _resolve_scoring(model, train_images, config, category, meta)
    # A global score keeps feature-map scorers for the maps where auto chose it, or the config asks for them.
    if scoring.image_score != "global" or features is not None or config.map_scorer == "local":
        return _fit_local_image_detector(
            model, train_images, config, scoring, category=category, meta=meta, features=features
        )
    embeddings = embed_images(model, train_images, batch_size=config.eval_batch_size, size=config.image_size)
    meta, threshold = _calibrated(meta, out_of_fold_scores(embeddings, seed=config.seed), config)
    density = GaussianDensity.fit(embeddings)
    return Detector(model.eval(), density, threshold, config, category, meta, scoring=scoring)


def _resolve_scoring(
    model: CutPasteNet, train_images: torch.Tensor, config: TrainConfig, category: str, meta: dict[str, Any] | None
) -> tuple[Scoring, dict[str, Any], tuple[torch.Tensor, torch.Tensor] | None]:
    """What the detector scores with. ``image_score=auto`` chooses on validation made from the training
    images where they are enough (:mod:`cutpaste.scoring.selection`, every candidate's AUROC recorded in
    ``meta["image_score_selection"]``), else by the category-name lookup; the config stays as asked. After a
    selection, the training images' features it computed are returned for the fit to reuse (and when the
    global score wins, the best feature-map candidate still gives the anomaly maps)."""
    meta = dict(meta or {})
    if config.image_score != "auto":
        return Scoring.of_config(config), meta, None
    if not can_select(config, train_images.shape[0]):
        lookup = Scoring(prior_choice(config, category), config.feature_density, config.feature_score, "lookup")
        return lookup, meta, None
    features = image_and_grid_features(model, train_images, config)
    selection = select_image_score(model, train_images, config, category=category, features=features)
    meta["image_score_selection"] = selection.to_dict()
    return selection.scoring(config), meta, features


def _calibrated(meta: dict[str, Any] | None, oof: torch.Tensor, config: TrainConfig) -> tuple[dict[str, Any], float]:
    """``meta`` with the out-of-fold scores of the reported score and their calibration; the threshold."""
    calibration = calibrate(oof, threshold_quantile(config), seed=config.seed)
    meta = dict(meta or {})
    meta["oof_scores"] = [float(v) for v in oof.tolist()]
    meta["calibration"] = calibration.to_dict()
    return meta, calibration.threshold


def _fit_patch_detector(
    model: CutPasteNet,
    train_images: torch.Tensor,
    config: TrainConfig,
    *,
    category: str,
    meta: dict[str, Any] | None,
    folds: int = 5,
) -> Detector:
    """Fits the grid densities on every training patch; the image threshold is the quantile of map
    maxima of training images scored by densities fitted without them (k-fold, as for the image model)."""
    device = next(model.parameters()).device
    grid = grid_size(config.image_size, config.patch_size, config.patch_stride)
    features = _patch_features(model, train_images, config)
    layout = resolve_layout(config.local_density, category)

    def fit(subset: torch.Tensor) -> Scorer:
        return fit_scorer(layout, subset.to(device), grid=grid, dim=config.local_dim, seed=config.seed)

    scores = out_of_fold(fit, features, device=device, seed=config.seed, folds=folds)[0].float()
    scores = scores.view(-1, grid, grid)
    held_out_max = _patch_image_scores(scores, _pixel_maps(scores, config), config)
    meta, threshold = _calibrated(meta, held_out_max, config)
    meta["map_low"] = float(scores.median())
    meta["local_layout"] = layout
    return Detector(
        model=model.eval(),
        # An image-level Gaussian of the mean patch feature: summary statistics for tracking.
        density=GaussianDensity.fit(features.mean(1)),
        threshold=threshold,
        config=config,
        category=category,
        meta=meta,
        grid=fit(features),
    )


def _fit_local_image_detector(
    model: CutPasteNet,
    train_images: torch.Tensor,
    config: TrainConfig,
    scoring: Scoring,
    *,
    category: str,
    meta: dict[str, Any] | None,
    folds: int = 5,
    features: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Detector:
    """The image model with feature-map Gaussians: the global Gaussian as usual, the grid Gaussians on
    the same forward pass (or ``features``, that pass's output already computed), and out-of-fold scores
    of the score reported to calibrate its threshold (and of the grid's, for the maps' own threshold)."""
    device = next(model.parameters()).device
    embeddings, grid_features = features or image_and_grid_features(model, train_images, config)
    layout = resolve_layout(scoring.feature_density, category)

    def fit(subset: torch.Tensor) -> Scorer:
        return fit_feature_scorer(subset.to(device), layout, config)

    scores = out_of_fold(fit, grid_features, device=device, seed=config.seed, folds=folds)[0].float()
    local_oof = grid_image_scores(scores, scoring.feature_score)
    # Chosen by image_score=auto, the global score is reported and the feature maps serve the anomaly maps.
    reported = out_of_fold_scores(embeddings, seed=config.seed) if scoring.image_score == "global" else local_oof
    meta, threshold = _calibrated(meta, reported, config)
    meta["map_low"] = float(scores.median())
    meta["map_threshold"] = float(torch.quantile(local_oof, threshold_quantile(config)))
    meta["local_layout"] = layout
    return Detector(
        model=model.eval(),
        density=GaussianDensity.fit(embeddings),
        threshold=threshold,
        config=config,
        category=category,
        meta=meta,
        grid=fit(grid_features),
        scoring=scoring,
    )
