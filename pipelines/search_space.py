"""What a Tune sweep searches: typed ranges and choices, validated before any trial starts.

A :class:`SearchSpace` is read from JSON (``--space FILE``) or taken from :data:`SPACES`; every key is a
field below, an unknown key or a bad range is one :class:`SearchSpaceError` naming the key. A field with
one value (a choice of one, or a range with ``low == high``) is held fixed; an empty choice leaves the
base config's value. :func:`trial_overrides` turns one sampled point into config overrides plus the
ensemble settings.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cutpaste.config import FEATURE_SCORES, IMAGE_SCORES, LOCAL_DENSITIES, MAX_JITTER, VARIANTS
from cutpaste.ensemble import RULES
from cutpaste.errors import ConfigError

# Metrics every validation-mode trial reports (pipelines/train_run.py); the sweep ranks on one of them.
METRICS = ("val_auroc", "val_aupr", "val_f1_max")


class SearchSpaceError(ConfigError):
    """A search space key, range or choice is invalid."""


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False

    @property
    def fixed(self) -> bool:
        return self.low == self.high


@dataclass(frozen=True)
class SearchSpace:
    """Ranges for the CutPaste augmentation, the optimiser, the model and the ensemble."""

    variant: tuple[str, ...] = VARIANTS
    # The lower and the upper end of each augmentation range are searched separately.
    area_ratio_min: FloatRange = FloatRange(0.01, 0.04)
    area_ratio_max: FloatRange = FloatRange(0.08, 0.25)
    aspect_ratio_min: FloatRange = FloatRange(0.2, 0.5)
    aspect_ratio_max: FloatRange = FloatRange(2.0, 4.0)
    scar_width_min: FloatRange = FloatRange(1.0, 4.0)
    scar_width_max: FloatRange = FloatRange(8.0, 24.0)
    scar_length_min: FloatRange = FloatRange(5.0, 15.0)
    scar_length_max: FloatRange = FloatRange(20.0, 40.0)
    patch_jitter: FloatRange = FloatRange(0.0, 0.3)
    # The whole image's colour jitter before the views are made, as choices: [0, 0.1] (the short preset
    # trains without it, demo and paper with 0.1). Empty: the base config's value.
    pre_jitter: tuple[float, ...] = ()
    learning_rate: FloatRange = FloatRange(0.003, 0.1, log=True)
    # Empty: the base config's value.
    steps: tuple[int, ...] = ()
    head_depth: tuple[int, ...] = (1, 2, 3)
    image_size: tuple[int, ...] = ()
    ensemble_size: tuple[int, ...] = (1,)
    ensemble_rule: tuple[str, ...] = ("mean",)
    # How the detector scores (no retraining is implied, but each trial trains its own model). Empty:
    # the base config's value; e.g. ["global", "combined"] and ["auto", "knn"].
    image_score: tuple[str, ...] = ()
    feature_density: tuple[str, ...] = ()
    # The k-NN bank's image score: ["max", "max-median"] (TrainConfig.feature_score).
    feature_score: tuple[str, ...] = ()
    # Stages stacked into the feature maps: [1, 2] (TrainConfig.feature_stages).
    feature_stages: tuple[int, ...] = ()

    def validate(self) -> SearchSpace:
        def fail(key: str, why: str) -> None:
            raise SearchSpaceError(f"search space: {key}: {why}")

        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, FloatRange):
                if not value.low <= value.high:
                    fail(f.name, f"min {value.low} is larger than max {value.high}")
                if value.log and value.low <= 0:
                    fail(f.name, f"a log range needs a positive min, got {value.low}")
        for name in ("area_ratio_min", "area_ratio_max"):
            r = getattr(self, name)
            if not (r.low > 0 and r.high < 1):
                fail(name, f"area ratios must lie inside (0, 1), got [{r.low}, {r.high}]")
        for name in ("aspect_ratio", "scar_width", "scar_length", "area_ratio"):
            lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            if lo.low <= 0:
                fail(f"{name}_min", f"must be positive, got {lo.low}")
            if lo.high > hi.low:
                fail(
                    f"{name}_min",
                    f"its max {lo.high} exceeds {name}_max's min {hi.low}, so a trial could draw min > max",
                )
        if self.aspect_ratio_min.high > 1 or self.aspect_ratio_max.low < 1:
            fail("aspect_ratio_min", "aspect ranges must keep 1 between aspect_ratio_min and aspect_ratio_max")
        if not (self.patch_jitter.low >= 0 and self.patch_jitter.high <= MAX_JITTER):
            low, high = self.patch_jitter.low, self.patch_jitter.high
            fail("patch_jitter", f"must lie in [0, {MAX_JITTER}], got [{low}, {high}]")
        for v in self.pre_jitter:
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= MAX_JITTER:
                fail("pre_jitter", f"values must be numbers in [0, {MAX_JITTER}], got {v!r}")
        if self.learning_rate.low <= 0:
            fail("learning_rate", f"must be > 0, got {self.learning_rate.low}")
        if not self.variant:
            fail("variant", "choose at least one variant")
        checks = (("steps", 1), ("image_size", 32), ("head_depth", 0), ("ensemble_size", 1), ("feature_stages", 1))
        for name, least in checks:
            for v in getattr(self, name):
                if not isinstance(v, int) or v < least:
                    fail(name, f"values must be integers >= {least}, got {v!r}")
        if not self.ensemble_size:
            fail("ensemble_size", "choose at least one size")
        if not self.ensemble_rule:
            fail("ensemble_rule", "choose at least one rule")
        choices = {"variant": VARIANTS, "ensemble_rule": RULES}
        choices |= {"image_score": IMAGE_SCORES, "feature_density": LOCAL_DENSITIES, "feature_score": FEATURE_SCORES}
        for name, known in choices.items():
            for v in getattr(self, name):
                if v not in known:
                    fail(name, f"unknown {v!r}; choose from {', '.join(known)}")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "search space") -> SearchSpace:
        """``{"learning_rate": [0.01, 0.1], "variant": ["3way"], "steps": [100, 200], ...}``; ranges may
        also be ``{"low": .., "high": .., "log": true}`` or one number (held fixed)."""
        known = {f.name: f for f in fields(cls)}
        updates: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise SearchSpaceError(f"{source}: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
            default = known[key].default if known[key].default is not dataclasses.MISSING else None
            try:
                if isinstance(default, FloatRange):
                    updates[key] = _as_range(value, default.log)
                else:
                    values = value if isinstance(value, list | tuple) else [value]
                    updates[key] = tuple(values)
            except (TypeError, ValueError) as exc:
                raise SearchSpaceError(f"{source}: {key}: cannot use {value!r} ({exc})") from None
        return dataclasses.replace(cls(), **updates).validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _as_range(value: Any, log: bool) -> FloatRange:
    if isinstance(value, dict):
        extra = set(value) - {"low", "high", "log"}
        if extra:
            raise ValueError(f"unknown range keys {sorted(extra)}")
        return FloatRange(float(value["low"]), float(value["high"]), bool(value.get("log", log)))
    if isinstance(value, list | tuple):
        low, high = value
        return FloatRange(float(low), float(high), log)
    return FloatRange(float(value), float(value), log)


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SearchSpaceError(f"search space file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SearchSpaceError(f"search space file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SearchSpaceError(f"search space file {path}: expected a JSON object")
    return SearchSpace.from_dict(data, source=str(path))


SPACES: dict[str, SearchSpace] = {
    "default": SearchSpace(),
    # The paper's geometry held fixed: variant, learning rate and ensemble only.
    "small": SearchSpace(
        area_ratio_min=FloatRange(0.02, 0.02),
        area_ratio_max=FloatRange(0.15, 0.15),
        aspect_ratio_min=FloatRange(0.3, 0.3),
        aspect_ratio_max=FloatRange(3.3, 3.3),
        scar_width_min=FloatRange(2.0, 2.0),
        scar_width_max=FloatRange(16.0, 16.0),
        scar_length_min=FloatRange(10.0, 10.0),
        scar_length_max=FloatRange(25.0, 25.0),
        patch_jitter=FloatRange(0.1, 0.1),
        head_depth=(2,),
        ensemble_size=(1, 3),
        ensemble_rule=RULES,
    ),
}


def dimensions(space: SearchSpace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(searched, fixed): searched maps a key to its range or choices, fixed to its single value."""
    searched: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    for f in fields(space):
        value = getattr(space, f.name)
        if isinstance(value, FloatRange):
            (fixed if value.fixed else searched)[f.name] = value.low if value.fixed else value
        elif len(value) == 1:
            fixed[f.name] = value[0]
        elif value:
            searched[f.name] = value
    return searched, fixed


_PAIRS = {"area_ratio": "augment.area_ratio", "aspect_ratio": "augment.aspect_ratio"}
_PAIRS |= {"scar_width": "augment.scar_width", "scar_length": "augment.scar_length"}


@dataclass(frozen=True)
class TrialPoint:
    """One sampled configuration: config overrides plus the ensemble it trains."""

    overrides: dict[str, Any] = field(default_factory=dict)
    ensemble_size: int = 1
    ensemble_rule: str = "mean"


def trial_overrides(params: dict[str, Any]) -> TrialPoint:
    """Sampled + fixed dimensions -> overrides for :meth:`cutpaste.config.TrainConfig.override`."""
    overrides: dict[str, Any] = {}
    for name, key in _PAIRS.items():
        if f"{name}_min" in params and f"{name}_max" in params:
            overrides[key] = [float(params[f"{name}_min"]), float(params[f"{name}_max"])]
    for name in ("patch_jitter", "pre_jitter"):
        if name in params:
            overrides[f"augment.{name}"] = float(params[name])
    scoring = ("image_score", "feature_density", "feature_score", "feature_stages")
    for key in ("variant", "learning_rate", "steps", "head_depth", "image_size", *scoring):
        if key in params:
            overrides[key] = params[key]
    return TrialPoint(
        overrides=overrides,
        ensemble_size=int(params.get("ensemble_size", 1)),
        ensemble_rule=str(params.get("ensemble_rule", "mean")),
    )
