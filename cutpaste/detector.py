"""A trained detector: encoder + Gaussian density + decision threshold + config, saved as one bundle.

The bundle is a single ``detector.pt`` written atomically, plus a readable ``detector.json`` summary that
records its SHA-256. Loading needs only the model definition, never the training code path, and reads the
bundle as data (tensors and plain values; see :mod:`cutpaste.integrity`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cutpaste import __version__
from cutpaste.atomic import atomic_torch_save, atomic_write_text
from cutpaste.config import TrainConfig
from cutpaste.errors import ConfigError, ModelBundleError
from cutpaste.integrity import file_digests, load_weights, verify_file, verify_files
from cutpaste.localization.gradcam import gradcam_maps
from cutpaste.model.dense import dense_embeddings, upsample_scores
from cutpaste.model.network import CutPasteNet, as_float_images, build_model
from cutpaste.scoring.choice import Scoring
from cutpaste.scoring.feature_maps import (
    grid_image_scores,
    grid_to_maps,
    image_and_grid_features,
)
from cutpaste.scoring.gaussian import GaussianDensity
from cutpaste.scoring.grid_gaussians import LocalDensity
from cutpaste.scoring.memory_bank import MemoryBank
from cutpaste.scoring.registry import load_scorer, scorer_state

# 2: the config without the options deleted after the decisions (optimizer, warmup_steps, embedding,
# blend views); 3: without the memory bank's per-image centring (feature_centring); 4: the resolved
# scoring beside the config (which keeps image_score=auto), one grid scorer (patch or feature map), every
# scorer saved with its registered kind.
# A bundle of another format is refused by name, never converted.
BUNDLE_FORMAT = 4
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
    # The scorer of a grid of positions: the patch model's patch features (config.patch_size > 0), or the
    # image model's stage feature maps (cutpaste/scoring/feature_maps.py); None where the image model
    # scores with the global Gaussian alone and draws GradCAM maps.
    grid: LocalDensity | MemoryBank | None = None
    # What the image score resolved to (image_score=auto chooses at fit); the config is never rewritten.
    # Left out, it is what the config names outright (set in __post_init__).
    scoring: Scoring = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.scoring is None:
            self.scoring = Scoring.of_config(self.config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def is_patch_model(self) -> bool:
        return bool(self.config.patch_size)

    @property
    def reports_global_density(self) -> bool:
        """True when the score is the Mahalanobis distance of the image embedding (the paper's), also where
        ``image_score=auto`` chose it and kept feature-map densities for the anomaly maps."""
        return not self.is_patch_model and (self.grid is None or self.scoring.image_score == "global")

    @property
    def map_range(self) -> tuple[float, float]:
        """Map values shown as cold and hot: a typical normal value, and twice the way from it to the
        threshold, so that the threshold sits in the middle of the colour scale of every heatmap."""
        low = float(self.meta.get("map_low", 0.0))
        # Where the global score is reported (auto's choice, or map_scorer=local), the threshold is in other
        # units than the map: the map's own.
        threshold = float(self.meta.get("map_threshold", self.threshold))
        return low, low + 2.0 * max(threshold - low, 1e-6)

    def grid_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Patch-level model: ``(B, 3, H, W)`` -> ``(B, G, G)`` Mahalanobis distance of every patch."""
        if not self.is_patch_model or self.grid is None:
            raise ConfigError("this detector has no patch-level model (train with --patch-size 32 or 64)")
        cfg, scorer, grid = self.config, self.grid, self.grid.grid
        out = []
        # Chunks bound the feature memory: 32 images x 3249 patches x 512 floats is 213 MB.
        for chunk in images.split(32):
            features = _patch_features(self.model, chunk, cfg)
            out.append(scorer.score(features.to(self.device)).view(-1, grid, grid).cpu())
        return torch.cat(out)

    def anomaly_maps(self, images: torch.Tensor, mode: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` -> scores ``(B,)`` float64 and maps ``(B, S, S)`` float32 at ``image_size``.

        ``dense`` (the patch model's Gaussian-upsampled patch scores, score = max of the map), ``local``
        (the image model's feature-map grid, upsampled; needs image_score local or auto) or
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
        if mode == "local" or (mode == "auto" and self.grid is not None):
            if self.grid is None:
                raise ConfigError("map mode local: this detector scores globally (train with --set map_scorer=local)")
            global_scores, grid = self._image_scores(images)
            return self._image_score(global_scores, grid), grid_to_maps(grid, self.config.image_size)
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
        by its global Gaussian or its feature-map grid's maximum (:attr:`scoring`)."""
        if self.is_patch_model:
            return self.anomaly_maps(images, "dense")[0]
        if self.reports_global_density:
            return self.density.score(self.embed(images))
        return self._image_score(*self._image_scores(images))

    def _image_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global scores ``(B,)`` and feature-map grid scores ``(B, G, G)`` from one forward pass."""
        if self.grid is None or self.is_patch_model:
            raise ConfigError("this detector has no feature-map scorer")
        embeddings, grid_features = image_and_grid_features(self.model, images, self.config)
        grid = self.config.local_grid
        local = self.grid.score(grid_features.to(self.device)).view(-1, grid, grid).cpu()
        return self.density.score(embeddings), local

    def _image_score(self, global_scores: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        if self.scoring.image_score == "global":  # auto chose it, or map_scorer=local: the grid gives the maps
            return global_scores.double()
        return grid_image_scores(grid, self.scoring.feature_score)

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
            "scoring": self.scoring.to_dict(),
            "density": scorer_state("gaussian", self.density),
            "threshold": self.threshold,
            "meta": self.meta,
            "grid": _grid_state(self.grid),
        }
        path = directory / BUNDLE_NAME
        atomic_torch_save(bundle, path)
        summary = {k: bundle[k] for k in ("format", "version", "config", "scoring", "category", "threshold", "meta")}
        summary["files"] = file_digests(directory, [BUNDLE_NAME])  # what a load checks before reading
        summary["density"] = self.density.summary()
        if self.grid is not None:
            summary["grid_scorer"] = self.grid.summary()
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
            scoring = Scoring.from_dict(bundle["scoring"], source=str(path))
            density = load_scorer(bundle["density"])
            grid = load_scorer(bundle["grid"]) if bundle["grid"] is not None else None
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
            grid=grid,  # type: ignore[arg-type]
            scoring=scoring,
        )


def recorded_digests(path: Path) -> dict[str, str] | None:
    """The ``files`` record of the ``detector.json`` next to ``path``; None where there is none (every bundle
    is saved with one: a missing record means a partial copy or an edited summary)."""
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
        raise ModelBundleError(
            f"{path.parent / SUMMARY_NAME} records no SHA-256 for {path.name}: refused (copy the whole model "
            "directory, or pin the digest you trust with --sha256)"
        )


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


def _grid_state(scorer: LocalDensity | MemoryBank | None) -> dict[str, Any] | None:
    return None if scorer is None else scorer_state(scorer.layout, scorer)
