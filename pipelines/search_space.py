"""What a Tune sweep searches: typed ranges and choices, validated before any trial starts.

A :class:`SearchSpace` is read from JSON (``--space FILE``) or taken from :data:`SPACES`. Its keys are the
config's own fields (:func:`config_key`: a dotted key such as ``augment.pre_jitter``, or its last part
when that names one field; ``X_min``/``X_max`` search the two ends of a range field such as
``augment.area_ratio``), plus the ensemble's size and rule. The fields below are the default space's
dimensions; any other config field may be searched by choices (``{"map_sigma": [2, 4]}``). Values are
checked by the config itself (each one applied to the base config), so the space never repeats the
config's rules; an unknown key or a bad value is one :class:`SearchSpaceError` naming the key. A key with
one value (a choice of one, or a range with ``low == high``) is held fixed; an empty choice leaves the
base config's value. :func:`trial_overrides` turns one sampled point into config overrides plus the
ensemble settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cutpaste.config import VARIANTS, TrainConfig, field_parts
from cutpaste.ensemble import RULES
from cutpaste.errors import ConfigError
from cutpaste.presets import read_json_object

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
    """The default dimensions (the CutPaste augmentation's ranges, the optimiser, the head, the ensemble)
    and any other config field by its key (``extra``)."""

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
    learning_rate: FloatRange = FloatRange(0.003, 0.1, log=True)
    head_depth: tuple[int, ...] = (1, 2, 3)
    ensemble_size: tuple[int, ...] = (1,)
    ensemble_rule: tuple[str, ...] = ("mean",)
    # Any other config field, by its key: choices, e.g. {"steps": (100, 200)}, {"augment.pre_jitter": (0, 0.1)},
    # {"image_score": ("global", "auto")}, {"feature_stages": (1, 2)}. Absent: the base config's value.
    extra: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def validate(self, base: TrainConfig | None = None) -> SearchSpace:
        """The space's own rules (ranges ordered, a range's two ends apart, an ensemble to build), then
        every value the config would take, checked by the config (``base``, the paper's by default)."""

        def fail(key: str, why: str) -> None:
            raise SearchSpaceError(f"search space: {key}: {why}")

        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, FloatRange):
                if not value.low <= value.high:
                    fail(f.name, f"min {value.low} is larger than max {value.high}")
                if value.log and value.low <= 0:
                    fail(f.name, f"a log range needs a positive min, got {value.low}")
        for name in _PAIRS:
            lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            if lo.high > hi.low:
                fail(
                    f"{name}_min",
                    f"its max {lo.high} exceeds {name}_max's min {hi.low}, so a trial could draw min > max",
                )
        if not self.variant:
            fail("variant", "choose at least one variant")
        for v in self.ensemble_size:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                fail("ensemble_size", f"values must be integers >= 1, got {v!r}")
        if not self.ensemble_size:
            fail("ensemble_size", "choose at least one size")
        if not self.ensemble_rule:
            fail("ensemble_rule", "choose at least one rule")
        for v in self.ensemble_rule:
            if v not in RULES:
                fail("ensemble_rule", f"unknown {v!r}; choose from {', '.join(RULES)}")
        for key in self.extra:
            config_key(key)
        _check_by_config(self, base or TrainConfig())
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "search space") -> SearchSpace:
        """``{"learning_rate": [0.01, 0.1], "variant": ["3way"], "steps": [100, 200], ...}``; ranges may
        also be ``{"low": .., "high": .., "log": true}`` or one number (held fixed)."""
        known = {f.name: f for f in fields(cls)}
        updates: dict[str, Any] = {}
        extra: dict[str, tuple[Any, ...]] = {}
        for key, value in data.items():
            if key not in known or key == "extra":
                config_key(key, source=source)  # names the key when it is no config field either
                extra[key] = tuple(value) if isinstance(value, list | tuple) else (value,)
                continue
            default = known[key].default if known[key].default is not dataclasses.MISSING else None
            try:
                if isinstance(default, FloatRange):
                    updates[key] = _as_range(value, default.log)
                else:
                    values = value if isinstance(value, list | tuple) else [value]
                    updates[key] = tuple(values)
            except (TypeError, ValueError) as exc:
                raise SearchSpaceError(f"{source}: {key}: cannot use {value!r} ({exc})") from None
        return dataclasses.replace(cls(), **updates, extra=extra).validate()

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
    return SearchSpace.from_dict(read_json_object(path, "search space file", SearchSpaceError), source=str(path))


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
    values = {f.name: getattr(space, f.name) for f in fields(space) if f.name != "extra"} | space.extra
    for name, value in values.items():
        if isinstance(value, FloatRange):
            (fixed if value.fixed else searched)[name] = value.low if value.fixed else value
        elif len(value) == 1:
            fixed[name] = value[0]
        elif value:
            searched[name] = value
    return searched, fixed


# The range fields whose two ends the default space searches separately (as X_min and X_max).
_PAIRS = ("area_ratio", "aspect_ratio", "scar_width", "scar_length")
_SPACE_ONLY = ("ensemble_size", "ensemble_rule")


def config_key(name: str, *, source: str = "search space") -> str:
    """The config's dotted key a space key names: itself, or the one field whose last part it is; a
    ``_min``/``_max`` suffix names an end of a range field."""
    keys = field_parts()
    base = name.removesuffix("_min").removesuffix("_max") if name.endswith(("_min", "_max")) else name
    for candidate in (name, base):
        if candidate in keys:
            return candidate
        matches = [k for k in keys if k.rsplit(".", 1)[-1] == candidate]
        if len(matches) == 1:
            return matches[0]
    known = sorted({k.rsplit(".", 1)[-1] for k in keys} | {f.name for f in fields(SearchSpace)} - {"extra"})
    raise SearchSpaceError(f"{source}: unknown key {name!r}; known keys: {', '.join(known)}")


def _check_by_config(space: SearchSpace, base: TrainConfig) -> None:
    """Every value a trial can take, applied alone to ``base``: the config's own check names what is wrong."""
    searched, fixed = dimensions(space)
    for name, value in {**searched, **fixed}.items():
        if name in _SPACE_ONLY:
            continue
        ends = (
            (value.low, value.high)
            if isinstance(value, FloatRange)
            else value
            if isinstance(value, tuple)
            else (value,)
        )
        key = config_key(name)
        for v in ends:
            if name.endswith(("_min", "_max")):
                lo, hi = getattr(base.augment, key.rsplit(".", 1)[-1])
                v = (v, max(float(v), hi)) if name.endswith("_min") else (min(float(v), lo), v)
            try:
                base.override({key: v}, source="search space")
            except ConfigError as exc:
                message = str(exc).removeprefix("search space: ").replace("augment: ", "augment.")
                message = message.removeprefix(f"{name}: ") if key == name else message
                raise SearchSpaceError(f"search space: {name}: {message}") from None


@dataclass(frozen=True)
class TrialPoint:
    """One sampled configuration: config overrides plus the ensemble it trains."""

    overrides: dict[str, Any] = field(default_factory=dict)
    ensemble_size: int = 1
    ensemble_rule: str = "mean"


def trial_overrides(params: dict[str, Any]) -> TrialPoint:
    """Sampled + fixed dimensions -> overrides for :meth:`cutpaste.config.TrainConfig.override`."""
    overrides: dict[str, Any] = {}
    for name, value in params.items():
        if name in _SPACE_ONLY:
            continue
        if name.endswith("_max"):
            continue  # taken with its _min
        if name.endswith("_min"):
            upper = params.get(name.removesuffix("_min") + "_max")
            if upper is not None:
                overrides[config_key(name)] = [float(value), float(upper)]
            continue
        overrides[config_key(name)] = value
    return TrialPoint(
        overrides=overrides,
        ensemble_size=int(params.get("ensemble_size", 1)),
        ensemble_rule=str(params.get("ensemble_rule", "mean")),
    )
