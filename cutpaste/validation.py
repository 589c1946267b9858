"""An honest objective for tuning: a validation set disjoint from the test split, and training scored on it.

Ranking configurations on the test split would tune to it. Instead a validation set is built from

- held-out normal training images (a deterministic split of ``train/good``; training never sees them), and
- anomalies made by a generator that is *not* CutPaste: Perlin-noise masks blending a foreign texture
  into held-out images, as DRAEM does (Zavrtanik et al., ICCV 2021), so a configuration cannot win by
  recognising its own augmentation;

or from a labelled folder the user gives (``good/`` plus one folder per defect type). Nothing here ever
lists or reads a ``test/`` folder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cutpaste.config import TrainConfig
from cutpaste.data.images import load_images
from cutpaste.data.layout import IMAGE_SUFFIXES, Sample, list_samples
from cutpaste.detector import Detector, fit_detector
from cutpaste.ensemble import EnsembleDetector, build_ensemble
from cutpaste.errors import ConfigError, DataError
from cutpaste.metrics import image_metrics
from cutpaste.synthetic_anomalies import ANOMALY_KINDS
from cutpaste.train import TrainHooks, resolve_device, train_model

# Validation images are decoded at one size for every trial, so configurations with different
# image sizes are ranked on the same pixels (each detector resizes to its own size).
VALIDATION_SIZE = 128
SPLIT_SEED = 0


@dataclass
class ValidationSet:
    """``images`` ``(N, 3, S, S)`` uint8; ``labels`` 0 normal / 1 anomalous; ``kinds`` a defect name per image."""

    images: torch.Tensor
    labels: list[int]
    kinds: list[str]
    source: str


@dataclass
class ValidationRun:
    """The trained detector (or ensemble), validation metrics per evaluation step, and the final ones."""

    detector: Detector | EnsembleDetector
    history: list[dict[str, float]]
    metrics: dict[str, float]
    train_images: int
    validation_images: int
    member_metrics: list[dict[str, float]] = field(default_factory=list)


def split_train(
    samples: Sequence[Sample], *, holdout_fraction: float = 0.2, seed: int = SPLIT_SEED
) -> tuple[list[Sample], list[Sample]]:
    """Deterministic (train, held-out) split of normal training samples, by a seeded permutation of paths."""
    if not 0 < holdout_fraction < 1:
        raise ConfigError(f"holdout_fraction: must lie in (0, 1), got {holdout_fraction}")
    ordered = sorted(samples, key=lambda s: str(s.path))
    held = max(2, round(len(ordered) * holdout_fraction))
    if len(ordered) - held < 2:
        raise DataError(
            f"{len(ordered)} training images are too few to hold out {held} for validation and train on the rest"
        )
    order = torch.randperm(len(ordered), generator=torch.Generator().manual_seed(seed)).tolist()
    held_idx = set(order[:held])
    train = [s for i, s in enumerate(ordered) if i not in held_idx]
    return train, [s for i, s in enumerate(ordered) if i in held_idx]


def synthetic_validation(
    held_out: Sequence[Sample], *, size: int = VALIDATION_SIZE, seed: int = SPLIT_SEED
) -> ValidationSet:
    """Held-out normal images plus four anomalies made from each of them: a foreign texture blended in
    (changes colour), a region warped, a region's detail erased and a thin stroke (change structure)."""
    normal = load_images([s.path for s in held_out], size)
    generator = torch.Generator().manual_seed(seed)
    made = {kind: make(normal, generator)[0] for kind, make in ANOMALY_KINDS.items()}
    return ValidationSet(
        images=torch.cat([normal, *made.values()]),
        labels=[0] * len(normal) + [1] * len(normal) * len(made),
        kinds=["good"] * len(normal) + [kind for kind in made for _ in range(len(normal))],
        source="held-out train/good + Perlin-shaped anomalies (foreign texture, warp, erasure, stroke)",
    )


def folder_validation(folder: str | Path, *, size: int = VALIDATION_SIZE) -> ValidationSet:
    """A labelled folder in the MVTec test layout: ``good/`` and one or more defect folders of images."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"validation folder not found: {folder}")
    groups: dict[str, list[Path]] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        images = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            groups[sub.name] = images
    if not groups.get("good"):
        raise DataError(f"validation folder {folder} has no normal images (expected {folder}/good/*.png)")
    defects = sorted(k for k in groups if k != "good")
    if not defects:
        raise DataError(
            f"validation folder {folder} has no anomalies: add at least one defect folder of images beside good/"
        )
    paths = groups["good"] + [p for d in defects for p in groups[d]]
    kinds = ["good"] * len(groups["good"]) + [d for d in defects for _ in groups[d]]
    return ValidationSet(
        images=load_images(paths, size),
        labels=[0 if k == "good" else 1 for k in kinds],
        kinds=kinds,
        source=str(folder),
    )


def prepare_validation(
    data_root: str | Path,
    category: str,
    *,
    folder: str | Path | None = None,
    holdout_fraction: float = 0.2,
    size: int = VALIDATION_SIZE,
) -> tuple[list[Sample], ValidationSet]:
    """(training samples, validation set). With ``folder`` every ``train/good`` image trains."""
    samples = list_samples(data_root, category, "train")
    if folder is not None:
        return samples, folder_validation(folder, size=size)
    train, held = split_train(samples, holdout_fraction=holdout_fraction)
    return train, synthetic_validation(held, size=size)


def score_validation(scores: torch.Tensor, validation: ValidationSet) -> dict[str, float]:
    """``val_auroc`` (the objective), AUPR, F1-max, and AUROC per anomaly kind (``val_auroc_<kind>``)."""
    metrics = image_metrics(validation.labels, scores.tolist(), validation.kinds)
    out = {"val_auroc": metrics.image_auroc, "val_aupr": metrics.aupr, "val_f1_max": metrics.f1_max}
    out.update({f"val_auroc_{kind}": value for kind, value in metrics.per_defect_auroc.items()})
    return out


def train_validated(
    config: TrainConfig,
    train_images: torch.Tensor,
    validation: ValidationSet,
    *,
    device: str = "auto",
    on_eval: Callable[[dict[str, float]], None] | None = None,
    category: str = "",
) -> tuple[Detector, list[dict[str, float]]]:
    """Trains one model and scores the validation set at every ``checkpoint_every`` step and at the end.

    The model is reached through the loop's ``wrap_model`` hook (returned unchanged), so training is
    exactly what :func:`cutpaste.train.train_model` does without a hook.
    """
    holder: dict[str, torch.nn.Module] = {}
    history: list[dict[str, float]] = []
    last_loss: dict[str, float] = {}

    def capture(model: torch.nn.Module) -> torch.nn.Module:
        holder["model"] = model
        return model

    def evaluate(step: int, _path: Path | None) -> None:
        # The detector as it would ship at this step, scored on what it reports (map maximum for a patch
        # model, the configured image score otherwise); the model goes back to training mode after.
        model = holder["model"]
        was_training = model.training
        detector = fit_detector(model, train_images, config, category=category)
        scores = detector.score(validation.images)
        model.train(was_training)
        record = {"step": float(step), **score_validation(scores, validation), **last_loss}
        history.append(record)
        if on_eval is not None:
            on_eval(record)

    hooks = TrainHooks(
        on_log=lambda r: last_loss.update(loss=r["loss"], accuracy=r["accuracy"]),
        on_checkpoint=evaluate,
        wrap_model=capture,
    )
    result = train_model(config, train_images, device=resolve_device(device), hooks=hooks, progress=False)
    detector = fit_detector(result.model, train_images, config, category=category, meta={"steps": result.steps_done})
    return detector, history


def validate_config(
    config: TrainConfig,
    data_root: str | Path,
    category: str,
    *,
    ensemble_size: int = 1,
    rule: str = "mean",
    folder: str | Path | None = None,
    holdout_fraction: float = 0.2,
    device: str = "auto",
    on_eval: Callable[[dict[str, float]], None] | None = None,
) -> ValidationRun:
    """Trains ``ensemble_size`` members (seeds ``config.seed + i``) and returns validation AUROC per step.

    ``on_eval`` gets every record; ``step`` counts on across members (member i's steps follow member
    i-1's), so a scheduler sees one growing time axis. After the last member, the ensemble itself is
    scored and reported at the final step.
    """
    config = config.validate()
    if ensemble_size < 1:
        raise ConfigError(f"ensemble_size: must be >= 1, got {ensemble_size}")
    samples, validation = prepare_validation(data_root, category, folder=folder, holdout_fraction=holdout_fraction)
    train_images = load_images([s.path for s in samples], config.image_size)
    members: list[Detector] = []
    history: list[dict[str, float]] = []
    member_metrics: list[dict[str, float]] = []
    for i in range(ensemble_size):
        member_config = config.override({"seed": config.seed + i})
        offset = i * config.steps

        def forward(record: dict[str, float], offset: int = offset, member: int = i) -> None:
            record = {**record, "step": record["step"] + offset, "member": float(member)}
            history.append(record)
            if on_eval is not None:
                on_eval(record)

        detector, member_history = train_validated(
            member_config, train_images, validation, device=device, on_eval=forward, category=category
        )
        members.append(detector)
        member_metrics.append({k: v for k, v in member_history[-1].items() if k.startswith("val_")})
    if ensemble_size == 1:
        final = member_metrics[0]
        result: Detector | EnsembleDetector = members[0]
    else:
        result = build_ensemble(members, train_images, rule=rule, category=category)
        final = score_validation(result.score(validation.images), validation)
        record = {"step": float(ensemble_size * config.steps), **final, "member": float(ensemble_size)}
        history.append(record)
        if on_eval is not None:
            on_eval(record)
    return ValidationRun(
        detector=result,
        history=history,
        metrics=final,
        train_images=len(samples),
        validation_images=len(validation.labels),
        member_metrics=member_metrics,
    )


def training_validation(
    detector: Detector, train_images: torch.Tensor, *, seed: int = SPLIT_SEED, max_images: int = 32
) -> dict[str, float]:
    """A validation AUROC for a detector trained on every training image, with no hold-out and no test
    label: its out-of-fold scores of the normal training images (recorded when it was fitted) against
    its scores of synthetic anomalies (every kind in :data:`ANOMALY_KINDS`) made from up to
    ``max_images`` of those images. The anomalies' base images were in the density, which biases their
    scores down: the number is conservative, and comparable between runs of one category (how the
    benchmark picks its champion seed)."""
    recorded = detector.meta.get("oof_scores")
    if not recorded:
        raise ConfigError("training validation needs the detector's out-of-fold scores (fit it with this version)")
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(train_images.shape[0], generator=generator)[:max_images]
    base = train_images[pick]
    made = {kind: make(base, generator)[0] for kind, make in ANOMALY_KINDS.items()}
    anomalous = detector.score(torch.cat(list(made.values())))
    scores = torch.cat([torch.tensor(recorded, dtype=torch.float64), anomalous.double().cpu()])
    kinds = ["good"] * len(recorded) + [kind for kind in made for _ in range(len(base))]
    metrics = image_metrics([0 if k == "good" else 1 for k in kinds], scores.tolist(), kinds)
    out = {"val_auroc": metrics.image_auroc, "val_aupr": metrics.aupr}
    out.update({f"val_auroc_{kind}": value for kind, value in metrics.per_defect_auroc.items()})
    return out
