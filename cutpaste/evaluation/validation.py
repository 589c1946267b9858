"""An honest objective for tuning: a validation set disjoint from the test split, and training scored on it.

Ranking configurations on the test split would tune to it. Instead a validation set is built from

- held-out normal training images: ``train/good`` is cut into :data:`FOLDS` folds by a seeded permutation
  of the paths (:func:`split_train`); a run trains on all folds but one and is validated on that one, and
  ``bench/decide.py`` rotates the held-out fold with the seed, so over seeds every normal image is a
  validation normal once and a fold is scored by an encoder that never saw it;
- anomalies made from each held-out image, :data:`DRAWS` of each kind, by generators that share nothing
  with a training view (:data:`cutpaste.anomalies.kinds.VOTING_KINDS`); ``val_auroc`` is read from
  those alone, the other kinds are reported beside it (``val_auroc_<kind>``);

or from a labelled folder the user gives (``good/`` plus one folder per defect type). The anomalies'
seed is fixed (:data:`VALIDATION_SEED`), not the run's: every seed and option of a category is scored on
the same images, which :attr:`ValidationSet.digest` names. Nothing here ever lists or reads a ``test/``
folder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from cutpaste.anomalies.kinds import ANOMALY_KINDS, VOTING_KINDS
from cutpaste.config import TrainConfig
from cutpaste.data.images import load_images
from cutpaste.data.layout import IMAGE_SUFFIXES, Sample, list_samples
from cutpaste.detector import Detector
from cutpaste.ensemble import EnsembleDetector, build_ensemble
from cutpaste.errors import ConfigError, DataError
from cutpaste.evaluation.metrics import image_metrics
from cutpaste.fit import fit_detector
from cutpaste.train.loop import TrainHooks, resolve_device, train_model

# Validation images are decoded at one size for every trial, so configurations with different
# image sizes are ranked on the same pixels (each detector resizes to its own size).
VALIDATION_SIZE = 128
SPLIT_SEED = 0
# The anomalies' seed: one for every seed and option, so their AUROCs compare.
VALIDATION_SEED = 0
FOLDS = 5
# Anomalies of each kind made from each held-out image: more pairs for the same normals.
DRAWS = 2
# Training validation leaves its anomalies' bases out of a refit only where this many images remain.
MIN_REFIT_IMAGES = 6


@dataclass
class ValidationSet:
    """``images`` ``(N, 3, S, S)`` uint8; ``labels`` 0 normal / 1 anomalous; ``kinds`` a defect name per
    image; ``masks`` ``(N, S, S)`` bool where the anomalies' pixels are known (synthetic sets), else None."""

    images: torch.Tensor
    labels: list[int]
    kinds: list[str]
    source: str
    masks: torch.Tensor | None = None

    @property
    def digest(self) -> str:
        """SHA-256 of the images and their kinds: equal digests mean AUROCs measured on the same set."""
        h = hashlib.sha256()
        h.update(self.images.contiguous().numpy().tobytes())
        h.update("\n".join(self.kinds).encode())
        return h.hexdigest()


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
    samples: Sequence[Sample], *, fold: int = 0, folds: int = FOLDS, seed: int = SPLIT_SEED
) -> tuple[list[Sample], list[Sample]]:
    """(train, held-out): ``train/good`` cut into ``folds`` folds by a seeded permutation of the sorted
    paths (so the listing order never matters), fold ``fold % folds`` held out."""
    if folds < 2:
        raise ConfigError(f"folds: must be >= 2, got {folds}")
    ordered = sorted(samples, key=lambda s: str(s.path))
    if len(ordered) < 2 * folds:
        raise DataError(
            f"{len(ordered)} training images are too few to cut into {folds} folds of at least 2 "
            f"(hold out one fold for validation and train on the rest)"
        )
    order = torch.randperm(len(ordered), generator=torch.Generator().manual_seed(seed))
    held_idx = set(torch.tensor_split(order, folds)[fold % folds].tolist())
    train = [s for i, s in enumerate(ordered) if i not in held_idx]
    return train, [s for i, s in enumerate(ordered) if i in held_idx]


def make_anomalies(
    base: torch.Tensor, *, seed: int = VALIDATION_SEED, draws: int = DRAWS
) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """``(N, 3, S, S)`` uint8 normals -> ``(N * kinds * draws, 3, S, S)`` anomalies, their kind names and
    their ``(M, S, S)`` bool masks: every kind of :data:`ANOMALY_KINDS` ``draws`` times from each image,
    from one seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    made, kinds, masks = [], [], []
    for _ in range(draws):
        for kind, make in ANOMALY_KINDS.items():
            images, mask = make(base, generator)
            made.append(images)
            masks.append(mask)
            kinds += [kind] * len(base)
    return torch.cat(made), kinds, torch.cat(masks)


def synthetic_validation(
    held_out: Sequence[Sample], *, size: int = VALIDATION_SIZE, seed: int = VALIDATION_SEED, draws: int = DRAWS
) -> ValidationSet:
    """Held-out normal images plus, from each, ``draws`` anomalies of every kind (:func:`make_anomalies`)."""
    normal = load_images([s.path for s in held_out], size)
    made, kinds, masks = make_anomalies(normal, seed=seed, draws=draws)
    return ValidationSet(
        images=torch.cat([normal, made]),
        labels=[0] * len(normal) + [1] * len(made),
        kinds=["good"] * len(normal) + kinds,
        source=f"held-out train/good + {draws} x ({', '.join(ANOMALY_KINDS)}) anomalies, seed {seed}",
        masks=torch.cat([torch.zeros(normal.shape[0], *normal.shape[2:], dtype=torch.bool), masks]),
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
    """(training samples, validation set): fold 0 of ``round(1 / holdout_fraction)`` held out. With
    ``folder`` every ``train/good`` image trains."""
    samples = list_samples(data_root, category, "train")
    if folder is not None:
        return samples, folder_validation(folder, size=size)
    if not 0 < holdout_fraction < 1:
        raise ConfigError(f"holdout_fraction: must lie in (0, 1), got {holdout_fraction}")
    train, held = split_train(samples, folds=max(2, round(1 / holdout_fraction)))
    return train, synthetic_validation(held, size=size)


def score_validation(scores: torch.Tensor, validation: ValidationSet) -> dict[str, float]:
    """``val_auroc`` (the objective: normals against the anomalies of the voting kinds, or of every kind
    where the set has none, as a user's folder), AUPR, F1-max, and AUROC per kind (``val_auroc_<kind>``)."""
    kinds = validation.kinds
    voting = [k == "good" or k in VOTING_KINDS for k in kinds]
    if not any(k in VOTING_KINDS for k in kinds):
        voting = [True] * len(kinds)
    keep = torch.tensor(voting)
    metrics = image_metrics(
        [lab for lab, v in zip(validation.labels, voting, strict=True) if v],
        scores[keep].tolist(),
        [k for k, v in zip(kinds, voting, strict=True) if v],
    )
    out = {"val_auroc": metrics.image_auroc, "val_aupr": metrics.aupr, "val_f1_max": metrics.f1_max}
    every = image_metrics(validation.labels, scores.tolist(), kinds)
    out.update({f"val_auroc_{kind}": value for kind, value in every.per_defect_auroc.items()})
    return out


def score_validation_maps(maps: torch.Tensor, validation: ValidationSet) -> dict[str, float]:
    """Pixel AUROC of anomaly maps ``(N, H, W)`` on a synthetic set's masks: ``val_pixel_auroc`` over the
    normals and the voting kinds' anomalies (the objective for choosing how a map is made), and
    ``val_pixel_auroc_<kind>`` over the normals and one kind. Maps are upsampled (bilinear) to the masks."""
    if validation.masks is None:
        raise ConfigError("pixel validation needs known anomaly masks (a synthetic validation set)")
    masks = validation.masks
    if maps.shape[-2:] != masks.shape[-2:]:
        maps = F.interpolate(maps[:, None].float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    kinds = validation.kinds

    def auroc(keep: list[bool]) -> float:
        chosen = torch.tensor(keep)
        return float(roc_auc_score(masks[chosen].flatten().numpy(), maps[chosen].flatten().float().numpy()))

    out = {"val_pixel_auroc": auroc([k == "good" or k in VOTING_KINDS for k in kinds])}
    for kind in ANOMALY_KINDS:
        if kind in kinds:
            out[f"val_pixel_auroc_{kind}"] = auroc([k in ("good", kind) for k in kinds])
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
    exactly what :func:`cutpaste.train.loop.train_model` does without a hook.
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
    detector: Detector, train_images: torch.Tensor, *, seed: int = VALIDATION_SEED, max_images: int = 32
) -> dict[str, float | str]:
    """A validation AUROC for a detector trained on every training image, with no test label.

    Up to ``max_images`` training images (a quarter at most) are the anomalies' bases; the detector's
    scoring is fitted again without them (its resolved config: no new choice), and that fit scores the
    bases, the anomalies made from them (:func:`make_anomalies`) and, out of fold, the other images. So
    no anomaly is scored by a density that holds its own base image: in-sample scores are several times
    lower than out-of-fold ones, which would rank every small anomaly below every normal. The encoder
    has still seen every image. Bases and anomalies come from ``seed`` alone, never the run's: every
    seed of a category is scored on the same anomalies (``digest``), which is what a champion is chosen
    by."""
    n = train_images.shape[0]
    count = max(2, min(max_images, n // 4))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    pick, rest = order[:count].sort().values, order[count:].sort().values
    anomalies, kinds, _ = make_anomalies(train_images[pick], seed=seed)
    if n - count >= MIN_REFIT_IMAGES:
        refit = fit_detector(detector.model, train_images[rest], detector.config, category=detector.category)
        base = refit.score(train_images[pick]).double().cpu()
        normal = torch.cat([torch.tensor(refit.meta["oof_scores"], dtype=torch.float64), base])
    else:  # too few images to leave any out: the detector's own out-of-fold normals, bases in its density
        refit = detector
        normal = torch.tensor(detector.meta["oof_scores"], dtype=torch.float64)
    scores = torch.cat([normal, refit.score(anomalies).double().cpu()])
    validation = ValidationSet(  # images: the bases and their anomalies, what the digest names
        images=torch.cat([train_images[pick], anomalies]),
        labels=[0] * len(normal) + [1] * len(kinds),
        kinds=["good"] * len(normal) + kinds,
        source="",
    )
    out: dict[str, float | str] = {k: v for k, v in score_validation(scores, validation).items() if k != "val_f1_max"}
    out["digest"] = validation.digest
    return out
