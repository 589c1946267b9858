"""A trained detector: encoder + Gaussian density + decision threshold + config, saved as one bundle.

The bundle is a single ``detector.pt`` written atomically, plus a readable ``detector.json`` summary that
records its SHA-256. Loading needs only the model definition, never the training code path, and reads the
bundle as data (tensors and plain values; see :mod:`cutpaste.integrity`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cutpaste import __version__
from cutpaste.atomic import atomic_torch_save, atomic_write_text
from cutpaste.config import TrainConfig
from cutpaste.errors import ConfigError, ModelBundleError
from cutpaste.integrity import file_digests, load_weights, verify_file, verify_files, warn_unverified
from cutpaste.localization.gradcam import gradcam_maps
from cutpaste.model.dense import dense_embeddings, upsample_scores
from cutpaste.model.network import CutPasteNet, as_float_images, build_model
from cutpaste.model.patches import grid_size
from cutpaste.scoring.feature_maps import (
    fit_feature_scorer,
    grid_image_scores,
    grid_to_maps,
    image_and_grid_features,
    standardise,
)
from cutpaste.scoring.gaussian import GaussianDensity, fold_parts, out_of_fold_scores
from cutpaste.scoring.grid_gaussians import LocalDensity, fit_local, load_local, resolve_layout
from cutpaste.scoring.memory_bank import MemoryBank
from cutpaste.scoring.selection import can_select, prior_choice, select_image_score
from cutpaste.scoring.threshold import calibrate, threshold_quantile

# 2: the config without the options deleted after the decisions (optimizer, warmup_steps, embedding,
# blend views); 3: without the memory bank's per-image centring (feature_centring). A bundle of another
# format is refused by name, never converted.
BUNDLE_FORMAT = 3
BUNDLE_NAME = "detector.pt"
MAP_MODES = ("auto", "dense", "local", "gradcam")
SUMMARY_NAME = "detector.json"


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
    # The patch-level model's per-grid-position densities; None for the image-level model.
    local: LocalDensity | MemoryBank | None = None
    # The image-level model's Gaussians over a stage's feature-map positions (image_score local or
    # combined, cutpaste/scoring/feature_maps.py); None when it scores with the global Gaussian alone.
    feature_local: LocalDensity | MemoryBank | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def is_patch_model(self) -> bool:
        return self.local is not None

    @property
    def reports_global_density(self) -> bool:
        """True when the score is the Mahalanobis distance of the image embedding (the paper's), also where
        ``image_score=auto`` chose it and kept feature-map densities for the anomaly maps."""
        return not self.is_patch_model and (self.feature_local is None or self.config.image_score == "global")

    @property
    def map_range(self) -> tuple[float, float]:
        """Map values shown as cold and hot: a typical normal value, and twice the way from it to the
        threshold, so that the threshold sits in the middle of the colour scale of every heatmap."""
        low = float(self.meta.get("map_low", 0.0))
        # A combined score's threshold is in other units than its (local) map: the map's own is kept apart.
        threshold = float(self.meta.get("map_threshold", self.threshold))
        return low, low + 2.0 * max(threshold - low, 1e-6)

    def grid_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Patch-level model: ``(B, 3, H, W)`` -> ``(B, G, G)`` Mahalanobis distance of every patch."""
        if self.local is None:
            raise ConfigError("this detector has no patch-level model (train with --patch-size 32 or 64)")
        cfg, grid = self.config, self.local.grid
        out = []
        # Chunks bound the feature memory: 32 images x 3249 patches x 512 floats is 213 MB.
        for chunk in images.split(32):
            features = _patch_features(self.model, chunk, cfg)
            out.append(self.local.score(features.to(self.device)).view(-1, grid, grid).cpu())
        return torch.cat(out)

    def anomaly_maps(self, images: torch.Tensor, mode: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` -> scores ``(B,)`` float64 and maps ``(B, S, S)`` float32 at ``image_size``.

        ``dense`` (the patch model's Gaussian-upsampled patch scores, score = max of the map), ``local``
        (the image model's feature-map grid, upsampled; needs image_score local, combined or auto) or
        ``gradcam`` (the image-level model); ``auto`` picks dense for a patch model, local where the
        image model has feature-map Gaussians, GradCAM otherwise.
        """
        if mode not in MAP_MODES:
            raise ConfigError(f"map mode: unknown {mode!r}; choose one of {', '.join(MAP_MODES)}")
        if mode == "dense" or (mode == "auto" and self.is_patch_model):
            grid = self.grid_scores(images)
            maps = _pixel_maps(grid, self.config)
            return _patch_image_scores(grid, maps, self.config), maps
        if self.is_patch_model:
            raise ConfigError(f"map mode {mode}: needs the image-level model; this bundle holds a patch model")
        if mode == "local" or (mode == "auto" and self.feature_local is not None):
            if self.feature_local is None:
                raise ConfigError("map mode local: this detector scores globally (train with --set image_score=local)")
            global_scores, grid = self._image_scores(images)
            return self._combine(global_scores, grid), grid_to_maps(grid, self.config.image_size)
        _, maps = gradcam_maps(
            self.model, self.density, images, image_size=self.config.image_size, batch_size=self.config.eval_batch_size
        )
        return self.density.score(self.embed(images)), maps

    def to(self, device: str | torch.device) -> Detector:
        self.model.to(device)
        return self

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return embed_images(self.model, images, batch_size=self.config.eval_batch_size, size=self.config.image_size)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 or float in [0, 1], any H, W -> ``(B,)`` float64 anomaly scores.

        The patch-level model scores an image by the maximum of its anomaly map; the image-level model
        by its global Gaussian, its feature-map grid's maximum, or both (``config.image_score``)."""
        if self.is_patch_model:
            return self.anomaly_maps(images, "dense")[0]
        if self.reports_global_density:
            return self.density.score(self.embed(images))
        return self._combine(*self._image_scores(images))

    def _image_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global scores ``(B,)`` and feature-map grid scores ``(B, G, G)`` from one forward pass."""
        if self.feature_local is None:
            raise ConfigError("this detector has no feature-map Gaussians")
        embeddings, grid_features = image_and_grid_features(self.model, images, self.config)
        grid = self.config.local_grid
        local = self.feature_local.score(grid_features.to(self.device)).view(-1, grid, grid).cpu()
        return self.density.score(embeddings), local

    def _combine(self, global_scores: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        if self.config.image_score == "global":  # auto chose the global score; the grid gives the maps
            return global_scores.double()
        local = grid_image_scores(grid, self.config.feature_score)
        if self.config.image_score == "local":
            return local
        norm = self.meta["score_norm"]
        return standardise(global_scores, norm["global"]) + standardise(local, norm["local"])

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
            "local": None if self.local is None else self.local.state_dict(),
            "feature_local": None if self.feature_local is None else self.feature_local.state_dict(),
        }
        path = directory / BUNDLE_NAME
        atomic_torch_save(bundle, path)
        summary = {k: bundle[k] for k in ("format", "version", "config", "category", "threshold", "meta")}
        summary["files"] = file_digests(directory, [BUNDLE_NAME])  # what a load checks before reading
        summary["density"] = self.density.summary()
        for name, local in (("local_density", self.local), ("feature_local_density", self.feature_local)):
            if local is not None:
                summary[name] = local.summary()
        atomic_write_text(json.dumps(summary, indent=2, sort_keys=True, default=str), directory / SUMMARY_NAME)
        return path

    @classmethod
    def load(
        cls, directory: str | Path, *, device: str | torch.device = "cpu", expected_sha256: str | None = None
    ) -> Detector:
        """Checks the bundle's SHA-256 (against ``expected_sha256`` when the caller pins one, e.g. from the
        model registry, and against ``detector.json``'s record), then reads it as data only."""
        directory = Path(directory)
        path = directory / BUNDLE_NAME if directory.is_dir() else directory
        if not directory.exists():
            raise ModelBundleError(f"model directory not found: {directory}")
        if not path.is_file():
            hint = ""
            if (directory / "checkpoints").is_dir():
                hint = " (it holds an unfinished training run: rerun `cutpaste train` with the same --out to resume)"
            raise ModelBundleError(f"no {BUNDLE_NAME} in {directory}{hint}")
        verify_bundle(path, expected_sha256)
        bundle = load_weights(path, kind="bundle")
        if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
            found = bundle.get("format") if isinstance(bundle, dict) else type(bundle).__name__
            raise ModelBundleError(
                f"{path} has bundle format {found!r}; this cutpaste {__version__} reads format {BUNDLE_FORMAT} "
                "(train it again)"
            )
        try:
            config = TrainConfig.from_dict(bundle["config"], source=str(path))
            # The weights are in the bundle: never look for pretrained files when loading.
            model = build_model(config.override({"pretrained": None}))
            model.load_state_dict(bundle["model"])
            density = GaussianDensity.from_state_dict(bundle["density"])
            local = load_local(bundle["local"]) if bundle.get("local") else None
            feature_local = load_local(bundle["feature_local"]) if bundle.get("feature_local") else None
        except (KeyError, RuntimeError, TypeError) as exc:
            raise ModelBundleError(f"{path} does not match this version's model: {exc}") from None
        model.eval().to(device)
        return cls(
            model=model,
            density=density,
            threshold=float(bundle["threshold"]),
            config=config,
            category=str(bundle.get("category", "")),
            meta=dict(bundle.get("meta", {})),
            local=local,
            feature_local=feature_local,
        )


def recorded_digests(path: Path) -> dict[str, str] | None:
    """The ``files`` record of the ``detector.json`` next to ``path``; None for bundles that predate it."""
    summary = path.parent / SUMMARY_NAME
    if not summary.is_file():
        return None
    try:
        record = json.loads(summary.read_text()).get("files")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelBundleError(f"{summary} is unreadable ({exc}): its SHA-256 record cannot be checked") from None
    if record is None:
        return None
    if not isinstance(record, dict) or not all(isinstance(v, str) for v in record.values()):
        raise ModelBundleError(f"{summary}: 'files' must map file names to SHA-256 digests")
    if path.name not in record:
        raise ModelBundleError(f"{summary} records no SHA-256 for {path.name}: refused")
    return record


def verify_bundle(path: Path, expected_sha256: str | None = None) -> None:
    if expected_sha256:
        verify_file(path, expected_sha256, recorded_in="the digest the caller pinned (e.g. the model registry)")
    record = recorded_digests(path)
    if record is not None:
        verify_files(path.parent, record, recorded_in=str(path.parent / SUMMARY_NAME))
    elif not expected_sha256:
        warn_unverified(path, SUMMARY_NAME)


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
    features = None
    if config.image_score == "auto":
        config, meta, features = _resolve_auto_score(model, train_images, config, category, meta)
    if config.patch_size:
        return _fit_patch_detector(model, train_images, config, category=category, meta=meta)
    if config.image_score != "global" or features is not None:  # a chosen global score keeps feature maps
        return _fit_local_image_detector(model, train_images, config, category=category, meta=meta, features=features)
    features = embed_images(model, train_images, batch_size=config.eval_batch_size, size=config.image_size)
    density = GaussianDensity.fit(features)
    oof = out_of_fold_scores(features, seed=config.seed)
    meta, threshold = _calibrated(meta, oof, config)
    return Detector(
        model=model.eval(),
        density=density,
        threshold=threshold,
        config=config,
        category=category,
        meta=meta,
    )


def _resolve_auto_score(
    model: CutPasteNet, train_images: torch.Tensor, config: TrainConfig, category: str, meta: dict[str, Any] | None
) -> tuple[TrainConfig, dict[str, Any], tuple[torch.Tensor, torch.Tensor] | None]:
    """``image_score=auto`` made concrete: chosen on validation from the training images where they are
    enough (:mod:`cutpaste.scoring.selection`, recorded in ``meta["image_score_selection"]``), else by the
    category-name lookup; the detector's config keeps the choice, so a loaded bundle scores the same way.
    After a selection, the training images' features it computed are returned for the fit to reuse (and
    when the global score wins, the best feature-map candidate still gives the anomaly maps)."""
    if not can_select(config, train_images.shape[0]):
        return config.override({"image_score": prior_choice(config, category)}), meta or {}, None
    features = image_and_grid_features(model, train_images, config)
    selection = select_image_score(model, train_images, config, category=category, features=features)
    meta = dict(meta or {})
    meta["image_score_selection"] = selection.to_dict()
    return config.override(selection.overrides()), meta, features


def _calibrated(meta: dict[str, Any] | None, oof: torch.Tensor, config: TrainConfig) -> tuple[dict[str, Any], float]:
    """``meta`` with the out-of-fold scores of the reported score and their calibration; the threshold."""
    calibration = calibrate(oof, threshold_quantile(config), seed=config.seed)
    meta = dict(meta or {})
    meta["oof_scores"] = [float(v) for v in oof.tolist()]
    meta["calibration"] = calibration.to_dict()
    return meta, calibration.threshold


def _patch_features(model: CutPasteNet, images: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """``(N, G * G, D)`` patch features on the grid the config describes."""
    return dense_embeddings(
        model,
        images,
        image_size=config.image_size,
        patch_size=config.patch_size,
        stride=config.patch_stride,
        patch_batch_size=config.patch_batch_size,
    )


def _pixel_maps(grid_scores: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    sigma = config.map_sigma * config.image_size / 256.0 if config.map_sigma > 0 else None
    return upsample_scores(
        grid_scores,
        image_size=config.image_size,
        patch_size=config.patch_size,
        stride=config.patch_stride,
        sigma=sigma,
    )


def _patch_image_scores(grid_scores: torch.Tensor, maps: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """``(B,)`` float64: the maximum of the raw grid (the paper's) or of the pixel map."""
    source = grid_scores if config.patch_score == "grid_max" else maps
    return source.flatten(1).amax(1).double()


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

    def fit(subset: torch.Tensor) -> LocalDensity | MemoryBank:
        return fit_local(subset.to(device), layout=layout, grid=grid, dim=config.local_dim, seed=config.seed)

    scores = _out_of_fold_local_scores(features, fit, device=device, seed=config.seed, folds=folds)
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
        local=fit(features),
    )


def _out_of_fold_local_scores(
    features: torch.Tensor,
    fit: Callable[[torch.Tensor], LocalDensity | MemoryBank],
    *,
    device: torch.device,
    seed: int,
    folds: int = 5,
) -> torch.Tensor:
    """``(N, L, D)`` position features -> ``(N, L)`` scores of each image's positions under densities
    fitted without that image (k-fold): the unbiased normal scores a threshold is calibrated on."""
    n = features.shape[0]
    out = torch.empty(features.shape[:2])
    for part in fold_parts(n, folds=folds, seed=seed):
        keep = torch.ones(n, dtype=torch.bool)
        keep[part] = False
        out[part] = fit(features[keep]).score(features[part].to(device)).float().cpu()
    return out


def _fit_local_image_detector(
    model: CutPasteNet,
    train_images: torch.Tensor,
    config: TrainConfig,
    *,
    category: str,
    meta: dict[str, Any] | None,
    folds: int = 5,
    features: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Detector:
    """The image model with feature-map Gaussians: the global Gaussian as usual, the grid Gaussians on
    the same forward pass (or ``features``, that pass's output already computed), and out-of-fold scores
    of both to standardise them (``combined``) and to calibrate the threshold of the score reported."""
    device = next(model.parameters()).device
    embeddings, grid_features = features or image_and_grid_features(model, train_images, config)
    layout = resolve_layout(config.feature_density, category)

    def fit(subset: torch.Tensor) -> LocalDensity | MemoryBank:
        return fit_feature_scorer(subset.to(device), layout, config)

    scores = _out_of_fold_local_scores(grid_features, fit, device=device, seed=config.seed, folds=folds)
    local_oof = grid_image_scores(scores, config.feature_score)
    global_oof = out_of_fold_scores(embeddings, seed=config.seed)
    norm = {
        "global": [float(global_oof.mean()), float(global_oof.std())],
        "local": [float(local_oof.mean()), float(local_oof.std())],
    }
    if config.image_score == "global":  # chosen by image_score=auto: the feature maps serve the anomaly maps
        calibration = global_oof
    elif config.image_score == "local":
        calibration = local_oof
    else:
        calibration = standardise(global_oof, norm["global"]) + standardise(local_oof, norm["local"])
    meta, threshold = _calibrated(meta, calibration, config)
    meta["score_norm"] = norm
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
        feature_local=fit(grid_features),
    )
