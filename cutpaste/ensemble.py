"""Ensembles of detectors: N members (seeds and/or variants) whose anomaly scores are combined.

The paper's 96.1 mean image AUROC is an ensemble of five 3-way models. Members' raw Mahalanobis
distances live on different scales (feature dimension, shrinkage), so by default each member's score is
standardised by the mean and std of its own *out-of-fold training* scores (never test data) and the
standardised scores are averaged. ``max`` takes the largest standardised score; ``logdensity`` sums the
members' Gaussian negative log-densities (``0.5 * (d^2 + log det S + D log 2 pi)``).

On disk an ensemble is one directory, written atomically (built in a temporary sibling and renamed)::

    <out>/ensemble.json        format, rule, per-member standardisation, calibrated threshold, category
    <out>/member-00/detector.pt, detector.json  ... one ordinary detector bundle per member

:func:`load_detector` reads either kind, so every entry point takes an ensemble as it takes one model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cutpaste import __version__
from cutpaste.atomic import atomic_write_text
from cutpaste.config import TrainConfig
from cutpaste.detector import BUNDLE_NAME, Detector
from cutpaste.errors import ConfigError, ModelBundleError
from cutpaste.integrity import file_digests, sha256_file, verify_file, verify_files
from cutpaste.scoring.folds import out_of_fold_scores
from cutpaste.scoring.threshold import calibrate
from cutpaste.scoring.threshold import threshold_quantile as _threshold_quantile

ENSEMBLE_FORMAT = 1
ENSEMBLE_MANIFEST = "ensemble.json"
RULES = ("mean", "max", "logdensity")
_LOG_2PI = math.log(2 * math.pi)


def _check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ConfigError(f"ensemble rule: unknown {rule!r}; choose one of {', '.join(RULES)}")
    return rule


def _log_norm_constant(detector: Detector) -> float:
    """``log det S + D log 2 pi`` of a member's Gaussian: what turns d^2 into a negative log-density."""
    sign, logdet = torch.linalg.slogdet(detector.density.covariance)
    if sign <= 0:
        raise ModelBundleError("ensemble rule logdensity: a member's covariance is not positive definite")
    return float(logdet) + detector.density.dim * _LOG_2PI


@dataclass
class EnsembleDetector:
    """``members`` score independently; ``combine`` turns ``(M, B)`` member scores into ``(B,)``."""

    members: list[Detector]
    rule: str
    # Per member: mean and std of its out-of-fold training scores (the standardisation).
    member_mean: list[float]
    member_std: list[float]
    threshold: float
    category: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_rule(self.rule)
        if not self.members:
            raise ConfigError("ensemble: needs at least one member")
        if self.rule == "logdensity":
            for i, member in enumerate(self.members):
                if not member.reports_global_density:
                    raise ConfigError(
                        f"ensemble rule logdensity: member {i} does not score by one Gaussian on its image "
                        f"embedding ({_score_kind(member)}); use --ensemble-rule mean or max"
                    )
        if not len(self.members) == len(self.member_mean) == len(self.member_std):
            raise ModelBundleError("ensemble: members and their standardisation differ in length")
        self._constants = [_log_norm_constant(m) for m in self.members] if self.rule == "logdensity" else []

    @property
    def config(self) -> TrainConfig:
        """The largest member's config: callers decode images at its ``image_size``; members resize as needed."""
        return max(self.members, key=lambda m: m.config.image_size).config

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    def to(self, device: str | torch.device) -> EnsembleDetector:
        for member in self.members:
            member.to(device)
        return self

    def member_scores(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(M, B)`` float64 raw scores, one row per member."""
        return torch.stack([m.score(images) for m in self.members])

    def combine(self, scores: torch.Tensor) -> torch.Tensor:
        """``(M, B)`` raw member scores -> ``(B,)`` ensemble scores (larger = more anomalous)."""
        if self.rule == "logdensity":
            constants = torch.tensor(self._constants, dtype=scores.dtype).unsqueeze(1)
            return 0.5 * (scores.square() + constants).sum(0)
        mean = torch.tensor(self.member_mean, dtype=scores.dtype).unsqueeze(1)
        std = torch.tensor(self.member_std, dtype=scores.dtype).unsqueeze(1)
        z = (scores - mean) / std
        return z.mean(0) if self.rule == "mean" else z.amax(0)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 or float in [0, 1], any H, W -> ``(B,)`` float64 anomaly scores."""
        return self.combine(self.member_scores(images))

    def anomaly_maps(self, images: torch.Tensor, mode: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """``(B,)`` ensemble scores and ``(B, S, S)`` maps at the largest member's size: the mean of the
        members' maps (each in its own ``mode``), each standardised like that member's score."""
        size = self.config.image_size
        scores, maps = [], []
        for member, mean, std in zip(self.members, self.member_mean, self.member_std, strict=True):
            member_scores, member_maps = member.anomaly_maps(images, mode)
            if member_maps.shape[-1] != size:
                member_maps = torch.nn.functional.interpolate(
                    member_maps[:, None], size=(size, size), mode="bilinear", align_corners=False
                )[:, 0]
            scores.append(member_scores)
            maps.append((member_maps.double() - mean) / std)
        return self.combine(torch.stack(scores)), torch.stack(maps).mean(0).float()

    def is_anomalous(self, scores: torch.Tensor) -> torch.Tensor:
        return scores >= self.threshold

    def save(self, directory: str | Path) -> Path:
        """Writes the whole ensemble next to ``directory`` and renames it into place; returns the manifest."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = directory.with_name(f".{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        try:
            names = []
            for i, member in enumerate(self.members):
                name = f"member-{i:02d}"
                member.save(staging / name)
                names.append(name)
            manifest = {
                "format": ENSEMBLE_FORMAT,
                "version": __version__,
                "rule": self.rule,
                "members": names,
                "member_mean": self.member_mean,
                "member_std": self.member_std,
                "threshold": self.threshold,
                "category": self.category,
                "meta": self.meta,
                # Pinning the manifest's own digest (as the registry does) pins every member through this.
                "files": file_digests(staging, [f"{name}/{BUNDLE_NAME}" for name in names]),
            }
            # The manifest is written last: a directory with it is complete.
            atomic_write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str), staging / ENSEMBLE_MANIFEST)
            _replace_dir(staging, directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return directory / ENSEMBLE_MANIFEST

    @classmethod
    def load(
        cls, directory: str | Path, *, device: str | torch.device = "cpu", expected_sha256: str | None = None
    ) -> EnsembleDetector:
        """``expected_sha256`` pins the manifest, whose ``files`` record pins every member's bundle."""
        directory = Path(directory)
        path = directory / ENSEMBLE_MANIFEST
        if expected_sha256 and path.is_file():
            verify_file(path, expected_sha256, recorded_in="the digest the caller pinned (e.g. the model registry)")
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelBundleError(f"no {ENSEMBLE_MANIFEST} in {directory}") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelBundleError(f"{path} is unreadable: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != ENSEMBLE_FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise ModelBundleError(f"{path} has ensemble format {found!r}; this version reads {ENSEMBLE_FORMAT}")
        record = manifest.get("files")
        if not isinstance(record, dict) or not all(isinstance(v, str) for v in record.values()):
            raise ModelBundleError(f"{path}: 'files' must map every member's file to its SHA-256: refused")
        unrecorded = [n for n in manifest.get("members", []) if f"{n}/{BUNDLE_NAME}" not in record]
        if unrecorded:
            raise ModelBundleError(f"{path} records no SHA-256 for members {unrecorded}: refused")
        verify_files(directory, record, recorded_in=str(path))
        try:
            members = [Detector.load(directory / name, device=device) for name in manifest["members"]]
            return cls(
                members=members,
                rule=str(manifest["rule"]),
                member_mean=[float(x) for x in manifest["member_mean"]],
                member_std=[float(x) for x in manifest["member_std"]],
                threshold=float(manifest["threshold"]),
                category=str(manifest.get("category", "")),
                meta=dict(manifest.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelBundleError(f"{path} is incomplete: {type(exc).__name__}: {exc}") from None


def _replace_dir(staging: Path, target: Path) -> None:
    """Renames ``staging`` to ``target``; an existing target is moved aside first and removed after."""
    if not target.exists():
        os.replace(staging, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def build_ensemble(
    members: Sequence[Detector],
    train_images: torch.Tensor,
    *,
    rule: str = "mean",
    threshold_quantile: float | None = None,
    category: str = "",
    meta: dict[str, Any] | None = None,
) -> EnsembleDetector:
    """Standardises and calibrates an ensemble on the members' normal training images ``(N, 3, H, W)``.

    Each member is standardised by the mean/std of out-of-fold training scores of the score it reports
    (map maximum for a patch model, the Gaussian for an image model; recorded by
    :func:`cutpaste.detector.fit_detector`), and the ``threshold_quantile`` (default: the first
    member's, or ``1 - target_fpr``) of the combined out-of-fold scores is the ensemble's threshold.
    No test image is involved.
    """
    _check_rule(rule)
    members = list(members)
    if not members:
        raise ConfigError("ensemble: needs at least one member")
    quantile = _threshold_quantile(members[0].config) if threshold_quantile is None else threshold_quantile
    oof = torch.stack([member_oof_scores(m, train_images) for m in members])
    mean = oof.mean(1)
    std = oof.std(1).clamp_min(1e-12)
    ensemble = EnsembleDetector(
        members=members,
        rule=rule,
        member_mean=mean.tolist(),
        member_std=std.tolist(),
        threshold=float("nan"),
        category=category or members[0].category,
        meta=dict(meta or {}),
    )
    calibration = calibrate(ensemble.combine(oof), quantile, seed=members[0].config.seed)
    ensemble.threshold = calibration.threshold
    ensemble.meta["calibration"] = calibration.to_dict()
    return ensemble


def _score_kind(detector: Detector) -> str:
    if detector.is_patch_model:
        return "a patch model scored by its map"
    if not detector.reports_global_density:
        return f"image_score {detector.scoring.image_score}"
    return "global Gaussian"


def member_oof_scores(member: Detector, train_images: torch.Tensor) -> torch.Tensor:
    """``(N,)`` out-of-fold training scores of the very score the member reports: those recorded when it
    was fitted on these images, else (bundles from before they were recorded) recomputed for a
    global-Gaussian member; other kinds of member without them are refused."""
    recorded = member.meta.get("oof_scores")
    if recorded is not None and len(recorded) == train_images.shape[0]:
        return torch.tensor(recorded, dtype=torch.float64)
    if member.reports_global_density:
        return out_of_fold_scores(member.embed(train_images), seed=member.config.seed)
    raise ModelBundleError(
        f"ensemble: a member ({_score_kind(member)}) has no out-of-fold scores for these "
        f"{train_images.shape[0]} training images; refit it with this version (cutpaste train --overwrite)"
    )


def load_detector(
    path: str | Path, *, device: str | torch.device = "cpu", expected_sha256: str | None = None
) -> Detector | EnsembleDetector:
    """A single detector (``detector.pt`` or its directory) or an ensemble directory (``ensemble.json``);
    ``expected_sha256`` is :func:`bundle_digest` of it, pinned by the caller."""
    path = Path(path)
    if path.is_dir() and (path / ENSEMBLE_MANIFEST).is_file():
        return EnsembleDetector.load(path, device=device, expected_sha256=expected_sha256)
    if path.is_file() and path.name == ENSEMBLE_MANIFEST:
        return EnsembleDetector.load(path.parent, device=device, expected_sha256=expected_sha256)
    if path.is_dir() and not (path / BUNDLE_NAME).exists() and any(path.glob(f"member-*/{BUNDLE_NAME}")):
        raise ModelBundleError(f"{path} has ensemble members but no {ENSEMBLE_MANIFEST}: it is incomplete")
    return Detector.load(path, device=device, expected_sha256=expected_sha256)


def bundle_digest(path: str | Path) -> str:
    """The one SHA-256 that pins a saved model: ``detector.pt``'s, or an ensemble's manifest (which records
    its members'). The registry tags each version with it; loaders given it refuse anything else."""
    path = Path(path)
    if path.is_dir():
        path = path / ENSEMBLE_MANIFEST if (path / ENSEMBLE_MANIFEST).is_file() else path / BUNDLE_NAME
    if not path.is_file():
        raise ModelBundleError(f"no {BUNDLE_NAME} or {ENSEMBLE_MANIFEST} at {path.parent}")
    return sha256_file(path)
