"""Scorers behind one interface, registered by name (as timm registers models).

A scorer is fitted on the features of normal training images and scores new features, larger meaning
more anomalous: the paper's Gaussian on the pooled embedding (``gaussian``: ``(N, D) -> (N,)``),
Gaussians over the positions of a feature grid (``per_location``, ``shared``: ``(N, L, D) -> (N, L)``)
and a k-NN memory bank of grid features (``knn``: ``(N, L, D) -> (N, L)``). How a grid becomes one image
score is an option (:func:`cutpaste.scoring.feature_maps.grid_image_scores`), not another scorer. (A
standardised sum of two scorers was measured as ``image_score=auto`` candidates and never helped on
validation, docs/decisions.md; it was deleted rather than registered.) Every scorer is saved with its
``kind`` (:func:`scorer_state`) and loaded from that state alone (:func:`load_scorer`); out-of-fold
scores of any of them come from :func:`cutpaste.scoring.folds.out_of_fold`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor

from cutpaste.errors import ModelBundleError
from cutpaste.scoring.gaussian import GaussianDensity
from cutpaste.scoring.grid_gaussians import LocalDensity
from cutpaste.scoring.memory_bank import MemoryBank


class Scorer(Protocol):
    def score(self, features: Tensor) -> Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def summary(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Registered:
    """How a kind is fitted (features and options -> scorer) and loaded (its state -> scorer)."""

    fit: Callable[..., Scorer]
    load: Callable[[dict[str, Any]], Scorer]
    grid: bool  # scores every position of a grid, (N, L, D) -> (N, L)


SCORERS: dict[str, Registered] = {}


def register(kind: str, *, fit: Callable[..., Scorer], load: Callable[[dict[str, Any]], Scorer], grid: bool) -> None:
    if kind in SCORERS:
        raise ValueError(f"scorer {kind!r} is registered already")
    SCORERS[kind] = Registered(fit=fit, load=load, grid=grid)


def fit_scorer(kind: str, features: Tensor, **options: Any) -> Scorer:
    """A registered scorer fitted on ``features``; ``options`` are the kind's own (grid, dim, seed)."""
    return _registered(kind).fit(features, **options)


def scorer_state(kind: str, scorer: Scorer) -> dict[str, Any]:
    """What a bundle stores: the scorer's state and the kind that reads it back."""
    return {"kind": kind, "state": scorer.state_dict()}


def load_scorer(saved: dict[str, Any]) -> Scorer:
    try:
        kind, state = saved["kind"], saved["state"]
    except (KeyError, TypeError):
        raise ModelBundleError("a saved scorer holds no 'kind' and 'state'") from None
    if kind not in SCORERS:
        raise ModelBundleError(f"saved scorer kind {kind!r} is not registered; known: {', '.join(SCORERS)}")
    return SCORERS[kind].load(state)


def _registered(kind: str) -> Registered:
    if kind not in SCORERS:
        raise ValueError(f"scorer: unknown kind {kind!r}; registered: {', '.join(SCORERS)}")
    return SCORERS[kind]


def _fit_gaussian(features: Tensor, **_: Any) -> GaussianDensity:
    return GaussianDensity.fit(features)


def _fit_grid_gaussians(layout: str) -> Callable[..., LocalDensity]:
    def fit(features: Tensor, *, grid: int, dim: int, seed: int) -> LocalDensity:
        return LocalDensity.fit(features, layout=layout, grid=grid, dim=dim, seed=seed)  # type: ignore[arg-type]

    return fit


def _fit_bank(features: Tensor, *, grid: int, seed: int, **_: Any) -> MemoryBank:
    return MemoryBank.fit(features, grid=grid, seed=seed)


register("gaussian", fit=_fit_gaussian, load=GaussianDensity.from_state_dict, grid=False)
for _layout in ("per_location", "shared"):
    register(_layout, fit=_fit_grid_gaussians(_layout), load=LocalDensity.from_state_dict, grid=True)
register("knn", fit=_fit_bank, load=MemoryBank.from_state_dict, grid=True)
