"""Run configuration: one dataclass describes a run; presets are named instances.

The same object feeds the CLI (every flag maps to a field), Ray's ``train_loop_config``, Tune's
``param_space`` and ``mlflow.log_params`` (through :func:`flatten`). It travels inside every
checkpoint and detector bundle so a model can be rebuilt from its file alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cutpaste.errors import ConfigError

VARIANTS = ("normal", "scar", "3way", "union")
LOCAL_DENSITIES = ("auto", "per_location", "shared")


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
    # Pre-augmentation of the whole image before any CutPaste view is made.
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
            if not 0 <= value <= 0.5:
                raise ConfigError(f"augment.{name}: must lie in [0, 0.5], got {value}")
        if not 0 <= self.scar_rotation <= 180:
            raise ConfigError(f"augment.scar_rotation: must lie in [0, 180], got {self.scar_rotation}")
        if self.pre_translate < 0:
            raise ConfigError(f"augment.pre_translate: must be >= 0, got {self.pre_translate}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run produces (no paths, no credentials)."""

    preset: str = "paper"
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
    momentum: float = 0.9
    weight_decay: float = 3e-5
    head_depth: int = 2
    head_width: int = 512
    seed: int = 0
    amp: bool = True
    channels_last: bool = True
    checkpoint_every: int = 1000
    log_every: int = 50
    eval_batch_size: int = 64
    # Decision threshold: this quantile of out-of-fold anomaly scores of the normal training images.
    threshold_quantile: float = 0.99
    # Localization. 0: the image-level model (maps come from GradCAM). 32 or 64: a patch-level model
    # trained on random crops of this size, scored densely at every ``patch_stride`` px.
    patch_size: int = 0
    patch_stride: int = 4
    # One Gaussian per grid position (aligned objects), one shared by all positions (textures,
    # unaligned objects), or "auto": the paper's grouping for MVTec categories, shared otherwise.
    local_density: str = "auto"
    # Per-position Gaussians live in this many principal directions of the patch features, so that
    # 57 x 57 of them fit in memory (full 512-d covariances would take 3.4 GB).
    local_dim: int = 64
    # Patches per encoder forward when scoring densely.
    patch_batch_size: int = 2048
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @property
    def num_classes(self) -> int:
        return 3 if self.variant == "3way" else 2

    def validate(self) -> TrainConfig:
        from cutpaste.model import BACKBONES

        if self.variant not in VARIANTS:
            raise ConfigError(f"variant: unknown {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone: unknown {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
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
        if self.patch_size:
            if self.patch_size < 16:
                raise ConfigError(f"patch_size: must be 0 (image-level model) or >= 16 px, got {self.patch_size}")
            if self.patch_size > self.image_size:
                raise ConfigError(f"patch_size: {self.patch_size} px is larger than the image ({self.image_size} px)")
        if self.patch_stride < 1:
            raise ConfigError(f"patch_stride: must be >= 1 px, got {self.patch_stride}")
        if self.local_density not in LOCAL_DENSITIES:
            raise ConfigError(
                f"local_density: unknown {self.local_density!r}; choose one of {', '.join(LOCAL_DENSITIES)}"
            )
        if self.local_dim < 1 or self.patch_batch_size < 1:
            raise ConfigError("local_dim and patch_batch_size: must be >= 1")
        if not 0 < self.threshold_quantile < 1:
            raise ConfigError(f"threshold_quantile: must lie in (0, 1), got {self.threshold_quantile}")
        self.augment.validate()
        return self

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
    default = spec.default if spec.default is not dataclasses.MISSING else None
    try:
        if isinstance(default, tuple) or (isinstance(value, list | tuple) and default is None):
            lo, hi = value
            return (type(default[0])(lo), type(default[1])(hi)) if default else (lo, hi)
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if isinstance(default, int | float) and not isinstance(value, bool):
            return type(default)(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot use {value!r} ({exc})") from None
    return value


def flatten(config: TrainConfig) -> dict[str, Any]:
    """Dotted keys to plain values, the form MLflow params and results tables want."""
    out: dict[str, Any] = {}

    def walk(prefix: str, obj: Any) -> None:
        for f in fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(f"{prefix}{f.name}.", value)
            else:
                out[f"{prefix}{f.name}"] = value

    walk("", config)
    return out


PRESETS: dict[str, TrainConfig] = {
    # The paper's protocol (Appendix A): 256 "epochs" x 256 steps, 96 images per 3-way step.
    "paper": TrainConfig(),
    # Sized for a 2-core CPU: a category trains in about two minutes at 64 px.
    "demo": TrainConfig(preset="demo", image_size=64, steps=250, batch_size=16, checkpoint_every=50, log_every=10),
    # The test suite's budget: about half a minute per category on a 2-core CPU.
    "ci": TrainConfig(
        preset="ci",
        image_size=64,
        steps=150,
        batch_size=8,
        checkpoint_every=50,
        log_every=10,
        eval_batch_size=32,
    ),
}


def preset(name: str) -> TrainConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def load_config(path: str | Path, *, base: TrainConfig | None = None) -> TrainConfig:
    """Reads a JSON config file: a short difference from a preset (``{"preset": "demo", ...}``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a JSON object at the top level")
    start = preset(data["preset"]) if "preset" in data else (base or preset("paper"))
    return start.override({k: v for k, v in data.items() if k != "preset"}, source=str(path))
