"""What an image-level detector's score resolved to. ``image_score=auto`` records its choice here and in
the bundle's ``meta``; the config keeps what the user asked for, so a saved config is the request whole."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cutpaste.config import TrainConfig
from cutpaste.errors import ModelBundleError

CHOSEN_BY = ("config", "validation", "lookup")


@dataclass(frozen=True)
class Scoring:
    """image_score: global or local (never auto); feature_density: the feature-map scorer's
    density as configured (``auto`` resolves per category at fit, recorded as ``meta["local_layout"]``);
    feature_score: how a grid becomes an image score; chosen_by: the config, validation made from the
    training images (:mod:`cutpaste.scoring.selection`), or the category lookup where images are too few."""

    image_score: str
    feature_density: str
    feature_score: str
    chosen_by: str = "config"

    @classmethod
    def of_config(cls, config: TrainConfig) -> Scoring:
        """The scoring a config names outright (a patch model, or ``auto`` before it resolves, scores globally)."""
        score = "global" if config.image_score == "auto" else config.image_score
        return cls(score, config.feature_density, config.feature_score)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, *, source: str) -> Scoring:
        try:
            scoring = cls(**data)
        except TypeError:
            raise ModelBundleError(f"{source}: 'scoring' must hold {', '.join(cls.__dataclass_fields__)}") from None
        if scoring.image_score not in ("global", "local") or scoring.chosen_by not in CHOSEN_BY:
            raise ModelBundleError(f"{source}: unknown scoring {data!r}")
        return scoring
