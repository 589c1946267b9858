"""Run configuration: one dataclass describes a run; presets are named instances.

The same object feeds the CLI (every flag maps to a field), Ray's ``train_loop_config``, Tune's
``param_space`` and ``mlflow.log_params`` (through :func:`flatten`). It travels inside every
checkpoint and detector bundle so a model can be rebuilt from its file alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from cutpaste.errors import ConfigError

VARIANTS = ("normal", "scar", "3way", "union")
LOCAL_DENSITIES = ("auto", "per_location", "shared", "knn")
IMAGE_SCORES = ("global", "local", "auto")
PATCH_SCORES = ("grid_max", "map_max")
FEATURE_SCORES = ("max", "max-median")
MAP_SCORERS = ("auto", "local")
# The largest colour jitter (brightness, contrast, saturation and hue alike; hue cannot go past half a turn).
MAX_JITTER = 0.5
# The config's three parts. training: what decides the trained weights, the training key (a resumed run
# and a cached model must match it exactly); scoring: how a trained encoder becomes a detector (features,
# densities, image score, threshold), refitted without training again; execution: how a run is carried
# out and reported. A field says its part where it is declared; an unmarked one is training, so a new
# field is part of the key until someone shows that training ignores it.
PARTS = ("training", "scoring", "execution")


def _scoring(default: Any) -> Any:
    return field(default=default, metadata={"part": "scoring"})


def _execution(default: Any) -> Any:
    return field(default=default, metadata={"part": "execution"})


@dataclass(frozen=True)
class AugmentConfig:
    """CutPaste parameter ranges; defaults are the paper's (Appendix A).

    Pixel sizes (scar width/length, translation) are given for a 256 px image and scale with
    ``image_size`` so that a smaller preset keeps the same geometry relative to the object.
    """

    area_ratio: tuple[float, float] = (0.02, 0.15)
    # Aspect ratio is drawn from (low, 1) or (1, high) with equal probability, as in the paper.
    aspect_ratio: tuple[float, float] = (0.3, 3.3)
    scar_width: tuple[float, float] = (2.0, 16.0)
    scar_length: tuple[float, float] = (10.0, 25.0)
    scar_rotation: float = 45.0
    patch_jitter: float = 0.1
    # Pre-augmentation of the whole image before any CutPaste view is made. Every view of a step shares
    # it, so its colour jitter teaches the encoder to ignore colour; every preset keeps the paper's 0.1
    # (dropping it lost at demo's budget on 3 seeds x 4 real categories: docs/decisions.md).
    pre_translate: float = 8.0
    pre_jitter: float = 0.1

    def validate(self) -> None:
        for name in ("area_ratio", "aspect_ratio", "scar_width", "scar_length"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ConfigError(f"augment.{name}: min {lo} is larger than max {hi}")
            if lo <= 0:
                raise ConfigError(f"augment.{name}: values must be positive, got {lo}")
        if not 0 < self.area_ratio[1] < 1:
            raise ConfigError(f"augment.area_ratio: must lie inside (0, 1), got {self.area_ratio}")
        if self.aspect_ratio[0] > 1 or self.aspect_ratio[1] < 1:
            raise ConfigError(f"augment.aspect_ratio: range must contain 1, got {self.aspect_ratio}")
        for name in ("patch_jitter", "pre_jitter"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_JITTER:
                raise ConfigError(f"augment.{name}: must lie in [0, {MAX_JITTER}], got {value}")
        if not 0 <= self.scar_rotation <= 180:
            raise ConfigError(f"augment.scar_rotation: must lie in [0, 180], got {self.scar_rotation}")
        if self.pre_translate < 0:
            raise ConfigError(f"augment.pre_translate: must be >= 0, got {self.pre_translate}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run produces (no paths, no credentials)."""

    preset: str = _execution("paper")
    variant: str = "3way"
    backbone: str = "resnet18"
    # None: from scratch. "imagenet": torchvision's cached weights file. Anything else: a local path.
    pretrained: str | None = None
    image_size: int = 256
    steps: int = 65536
    # Normal images drawn per step; every augmented class adds as many views, so the step sees
    # batch_size * num_classes images (64 for 2-way, 96 for 3-way at the paper's 32).
    batch_size: int = 32
    learning_rate: float = 0.03
    # SGD with momentum and one cosine cycle, the paper's (Adam(W) and a warm-up lost: docs/quality.md).
    momentum: float = 0.9
    weight_decay: float = 3e-5
    head_depth: int = 2
    head_width: int = 512
    seed: int = 0
    # bf16 autocast and channels_last, applied where they are faster: CUDA, and CPUs with native bf16
    # (AMX or AVX512-BF16, detected; see cutpaste/model/precision.py).
    amp: bool = True
    channels_last: bool = True
    # The image-level model's anomaly score. global: the Gaussian on the embedding (the paper's);
    # local: Gaussians over the positions of a stage's feature map (``local_stage``, pooled to a
    # ``local_grid`` square, laid out as ``local_density`` says), image score its maximum, and anomaly
    # maps from that grid instead of GradCAM. Local scoring is an addition of ours, not the paper's
    # protocol. auto: the detector chooses among these (and the k-NN bank's variant) on validation made
    # from its own training images (cutpaste/scoring/selection.py), and records what it resolved to. (The
    # standardised sum of both lost on validation, docs/decisions.md, and was deleted.)
    image_score: str = _scoring("global")
    local_stage: int = _scoring(3)
    local_grid: int = _scoring(8)
    # How many consecutive stages, ending at ``local_stage``, the feature maps stack: 2 adds the stage
    # below it (finer detail: a thin scratch, a pore), each pooled to the grid and concatenated, as
    # PatchCore's hypercolumn of two stages (ours; measured to help the k-NN bank on textures).
    feature_stages: int = _scoring(1)
    # Layout of those feature-map densities, as for local_density (knn included); auto by default,
    # since a missing part is only anomalous at the place where it belongs.
    feature_density: str = _scoring("auto")
    # How a feature-map grid becomes an image score: its maximum, or its maximum minus its median
    # position (ours): a texture's own typical patch is normal, so an image whose every patch is far
    # from the bank (unusual lighting) is not flagged for that, only for the patch that stands out.
    feature_score: str = _scoring("max")
    # What draws the image model's anomaly maps. auto: the scorer that scores (the feature-map grid where
    # the image score is local; GradCAM for the global Gaussian; where image_score=auto chose the global
    # score, its best-ranked candidate with a grid). local: the feature-map scorer of ``feature_density``,
    # fitted for the maps even where the image score is the global Gaussian (the paper's score, maps
    # without GradCAM's backward pass). The image score is the same either way.
    map_scorer: str = _scoring("auto")
    # Ship the untrained twin (the same scoring on the run's random initial weights) instead of the trained
    # encoder where the twin scores higher on the detector's validation (same anomalies, same digest):
    # training must earn its place per category (ours; off in the paper preset, which is the paper's).
    untrained_fallback: bool = _scoring(False)
    checkpoint_every: int = _execution(1000)
    log_every: int = _execution(50)
    eval_batch_size: int = _execution(64)
    # Decision threshold: this quantile of out-of-fold anomaly scores of the normal training images.
    threshold_quantile: float = _scoring(0.99)
    # The false-positive rate on normal images to calibrate for instead (0: use threshold_quantile);
    # the expected rate and its bootstrap interval are reported either way (cutpaste/scoring/threshold.py).
    target_fpr: float = _scoring(0.0)
    # Localization. 0: the image-level model (maps come from GradCAM). 32 or 64: a patch-level model
    # trained on random crops of this size, scored densely at every ``patch_stride`` px.
    patch_size: int = 0
    patch_stride: int = _scoring(4)
    # The patch model's density: one Gaussian shared by all grid positions (the paper's), one per
    # position (PaDiM style, an addition of ours), "knn" (a memory bank of training features, score the
    # distance to the nearest, as in PatchCore; ours, cutpaste/scoring/memory_bank.py), or "auto" (our grouping
    # of MVTec categories: per position for aligned objects, shared otherwise).
    local_density: str = _scoring("shared")
    # Patch model: the Gaussian that spreads a patch score over its receptive field, in px at 256 px
    # (scaled with image_size; 4 as we read the paper; 0: a quarter of the patch, our earlier default),
    # and the image score: the maximum of the raw patch-score grid (the paper's) or of the pixel map.
    map_sigma: float = _scoring(4.0)
    patch_score: str = _scoring("grid_max")
    # Per-position Gaussians live in this many principal directions of the patch features, so that
    # 57 x 57 of them fit in memory (full 512-d covariances would take 3.4 GB).
    local_dim: int = _scoring(64)
    # Patches per encoder forward when scoring densely.
    patch_batch_size: int = _execution(2048)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @property
    def num_classes(self) -> int:
        return 3 if self.variant == "3way" else 2

    @property
    def feature_map_stages(self) -> tuple[int, ...]:
        """The ResNet stages the feature maps stack: ``feature_stages`` of them, ending at ``local_stage``."""
        return tuple(range(self.local_stage - self.feature_stages + 1, self.local_stage + 1))

    def validate(self) -> TrainConfig:
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant: unknown {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        _check_backbone(self.backbone)
        positive = ("image_size", "steps", "batch_size", "head_width", "checkpoint_every", "log_every")
        for name in (*positive, "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.image_size < 32:
            raise ConfigError(f"image_size: must be >= 32 px, got {self.image_size}")
        if self.head_depth < 0:
            raise ConfigError(f"head_depth: must be >= 0, got {self.head_depth}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate: must be > 0, got {self.learning_rate}")
        choice_fields = {"image_score": IMAGE_SCORES}
        choice_fields |= {
            "feature_density": LOCAL_DENSITIES,
            "feature_score": FEATURE_SCORES,
            "map_scorer": MAP_SCORERS,
        }
        choice_fields |= {"local_density": LOCAL_DENSITIES, "patch_score": PATCH_SCORES}
        for name, choices in choice_fields.items():
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name}: unknown {getattr(self, name)!r}; choose one of {', '.join(choices)}")
        for name, value in (("image_score", self.image_score), ("map_scorer", self.map_scorer)):
            if value != "local":
                continue
            if self.patch_size:
                raise ConfigError(f"{name}: local applies to the image-level model (patch_size 0)")
            if not self.backbone.startswith("resnet"):
                raise ConfigError(f"{name}: 'local' needs a ResNet backbone, got {self.backbone!r}")
        self._validate_feature_maps()
        if self.patch_size:
            if self.patch_size < 16:
                raise ConfigError(f"patch_size: must be 0 (image-level model) or >= 16 px, got {self.patch_size}")
            if self.patch_size > self.image_size:
                raise ConfigError(f"patch_size: {self.patch_size} px is larger than the image ({self.image_size} px)")
        if self.patch_stride < 1:
            raise ConfigError(f"patch_stride: must be >= 1 px, got {self.patch_stride}")
        if self.map_sigma < 0:
            raise ConfigError(f"map_sigma: must be >= 0 px, got {self.map_sigma}")
        if self.local_dim < 1 or self.patch_batch_size < 1:
            raise ConfigError("local_dim and patch_batch_size: must be >= 1")
        if not 0 <= self.target_fpr < 1:
            raise ConfigError(f"target_fpr: must lie in [0, 1), got {self.target_fpr}")
        if not 0 < self.threshold_quantile < 1:
            raise ConfigError(f"threshold_quantile: must lie in (0, 1), got {self.threshold_quantile}")
        self.augment.validate()
        return self

    def _validate_feature_maps(self) -> None:
        """The image model's feature-map scoring fields."""
        if self.local_stage not in (1, 2, 3, 4):
            raise ConfigError(f"local_stage: choose a ResNet stage 1..4, got {self.local_stage}")
        if self.local_grid < 1:
            raise ConfigError(f"local_grid: must be >= 1, got {self.local_grid}")
        if not isinstance(self.feature_stages, int) or not 1 <= self.feature_stages <= self.local_stage:
            raise ConfigError(
                f"feature_stages: stack 1..local_stage ({self.local_stage}) stages, got {self.feature_stages!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Builds a config from a (possibly partial) dict; unknown keys are an error, never dropped."""
        return _apply(cls(), data, source=source).validate()

    def override(self, changes: dict[str, Any], *, source: str = "overrides") -> TrainConfig:
        """A copy with ``changes`` applied; keys may be dotted (``augment.area_ratio``) or nested."""
        return _apply(self, changes, source=source).validate()


def _check_backbone(name: str) -> None:
    """The registry is imported here, not at the top: it needs torchvision, and reading a config should not."""
    from cutpaste.model.backbones import BACKBONES

    if name not in BACKBONES:
        raise ConfigError(f"backbone: unknown {name!r}; choose one of {', '.join(BACKBONES)}")


def _apply(base: Any, changes: dict[str, Any], *, source: str) -> Any:
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        elif isinstance(value, dict):
            nested.setdefault(head, {}).update(value)
        else:
            flat[key] = value
    known = {f.name: f for f in fields(base)}
    updates: dict[str, Any] = {}
    for key, value in flat.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
        updates[key] = _coerce(known[key], value, f"{source}: {key}")
    for key, sub in nested.items():
        current = getattr(base, key, None) if key in known else None
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"{source}: unknown section {key!r}")
        updates[key] = _apply(current, sub, source=f"{source}: {key}")
    return replace(base, **updates)


def _coerce(spec: dataclasses.Field, value: Any, where: str) -> Any:
    """``value`` as the field's type. Strings (CLI flags, ``--set``) are parsed; a number that is not the
    field's kind is an error, never silently changed: ``true`` is not a stage count, 2.5 steps are not 2."""
    default = spec.default if spec.default is not dataclasses.MISSING else None
    try:
        if isinstance(default, tuple) or (isinstance(value, list | tuple) and default is None):
            lo, hi = value
            return (type(default[0])(lo), type(default[1])(hi)) if default else (lo, hi)
        if isinstance(default, bool):
            return _as_bool(value)
        if isinstance(default, int | float) and isinstance(value, bool):
            raise ValueError(f"expected a number, not {str(value).lower()}")
        if isinstance(default, int):
            return _as_int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot use {value!r} ({exc})") from None
    return value


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", "") == "b":  # numpy's too
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError("expected true or false")


def _as_int(value: Any) -> int:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError("expected a whole number") from None
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("expected a whole number")
    return int(value)


def flatten(config: TrainConfig | dict[str, Any]) -> dict[str, Any]:
    """Dotted keys to plain values, the form MLflow params and results tables want; ``config`` may be a
    saved dict (from a checkpoint or a bundle) that holds keys this version lacks."""
    out: dict[str, Any] = {}

    def walk(prefix: str, obj: Any) -> None:
        items = obj.items() if isinstance(obj, dict) else ((f.name, getattr(obj, f.name)) for f in fields(obj))
        for name, value in items:
            if dataclasses.is_dataclass(value) or isinstance(value, dict):
                walk(f"{prefix}{name}.", value)
            else:
                out[f"{prefix}{name}"] = value

    walk("", config)
    return out


def field_parts() -> dict[str, str]:
    """Every dotted config key and the part it belongs to (:data:`PARTS`)."""
    out: dict[str, str] = {}

    def walk(prefix: str, cls: Any) -> None:
        for f in fields(cls):
            if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
                walk(f"{prefix}{f.name}.", f.default_factory)
            else:
                out[f"{prefix}{f.name}"] = f.metadata.get("part", "training")

    walk("", TrainConfig)
    return out


def config_part(config: TrainConfig | dict[str, Any], part: str) -> dict[str, Any]:
    """The dotted fields of one part. ``config`` may be a saved dict (from a checkpoint or a bundle) that
    holds keys this version lacks: those count as training, the safe side for a comparison."""
    if part not in PARTS:
        raise ConfigError(f"config part: unknown {part!r}; choose one of {', '.join(PARTS)}")
    flat = flatten(config)
    parts = field_parts()
    return {k: v for k, v in flat.items() if parts.get(k, "training") == part}
