"""One category end to end: read, train (resumable), fit the density, save the bundle, evaluate.

This is the function every entry point calls: the CLI directly, Ray Train workers through
``pipelines/``. The output directory holds:

    checkpoints/last.pt   training state, rewritten atomically every ``checkpoint_every`` steps
    detector.pt           the finished bundle (written last, atomically: its presence means "done")
    detector.json         a readable summary of the bundle
    train_log.jsonl       loss / accuracy / lr / img/s per log interval
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cutpaste.config import TrainConfig
from cutpaste.data.images import load_images
from cutpaste.data.layout import list_samples
from cutpaste.detector import BUNDLE_NAME, Detector
from cutpaste.errors import ConfigError, DataError
from cutpaste.evaluation.evaluate import Evaluation, MapBatch, evaluate_detector
from cutpaste.evaluation.validation import training_validation
from cutpaste.fit import fit_detector
from cutpaste.scoring.baselines import untrained_detector
from cutpaste.train.checkpoint import write_history
from cutpaste.train.loop import TrainHooks, TrainResult, resolve_device, train_model

CHECKPOINT_DIR = "checkpoints"


@dataclass
class CategoryRun:
    # None on the workers of a data-parallel run other than rank 0: only rank 0 fits and saves.
    detector: Detector | None
    training: TrainResult
    out_dir: Path


def ensure_writable(directory: Path) -> None:
    """Fails early, before any training, when results could not be written at the end."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DataError(f"output directory {directory} is not writable: {exc.strerror or exc}") from None


def train_category(
    config: TrainConfig,
    data_root: str | Path,
    category: str,
    out_dir: str | Path,
    *,
    device: str = "auto",
    restart: bool = False,
    overwrite: bool = False,
    hooks: TrainHooks | None = None,
    progress: bool = True,
) -> CategoryRun:
    """Trains on ``<data_root>/<category>/train/good`` and saves the detector bundle in ``out_dir``.

    An existing bundle is never replaced unless ``overwrite``; even then the old one stays until the
    new one is complete. An unfinished run in ``out_dir`` resumes unless ``restart``.
    """
    config.validate()
    out_dir = Path(out_dir)
    if (out_dir / BUNDLE_NAME).exists() and not overwrite:
        raise ConfigError(f"{out_dir} already holds a trained detector; pass --overwrite or choose another --out")
    ensure_writable(out_dir)
    samples = list_samples(data_root, category, "train")
    images = load_images([s.path for s in samples], config.image_size)
    started = time.perf_counter()
    result = train_model(
        config,
        images,
        device=resolve_device(device),
        checkpoint_dir=out_dir / CHECKPOINT_DIR,
        resume=not restart,
        hooks=hooks,
        progress=progress,
    )
    if hooks is not None and hooks.rank != 0:
        # Workers change how fast a run trains, not what it produces: rank 0 alone fits the density,
        # calibrates the threshold and saves; the other ranks' models are the same weights.
        return CategoryRun(detector=None, training=result, out_dir=out_dir)
    last = result.history[-1] if result.history else {}
    detector = fit_detector(
        result.model,
        images,
        config,
        category=category,
        meta={
            "train_images": len(samples),
            "steps": result.steps_done,
            "resumed_from_step": result.resumed_from_step,
            "train_wall_s": round(time.perf_counter() - started, 3),
            "final_loss": last.get("loss"),
            "final_accuracy": last.get("accuracy"),
        },
    )
    detector = _validated(detector, images, config, category=category)
    write_history(result.history, out_dir / "train_log.jsonl")
    detector.save(out_dir)
    return CategoryRun(detector=detector, training=result, out_dir=out_dir)


def _validated(detector: Detector, images: torch.Tensor, config: TrainConfig, *, category: str) -> Detector:
    """Synthetic anomalies against out-of-fold normals (what a champion is chosen by, no test label read;
    the anomalies' seed is fixed, so every seed of the category is scored on the same set), then the
    untrained twin's check where the config asks for it."""
    detector.meta["validation"] = training_validation(detector, images)
    if config.untrained_fallback:
        return no_worse_than_untrained(detector, images, config=config, category=category)
    return detector


def no_worse_than_untrained(
    detector: Detector, images: torch.Tensor, *, config: TrainConfig | None = None, category: str = ""
) -> Detector:
    """The trained detector, or its untrained twin (the run's initial random weights, scored as ``config``
    asks: with ``image_score=auto`` the twin chooses its own score) where the twin scores higher on the
    same validation anomalies (one digest). The encoder has seen
    these normal images, which flatters the trained one: the twin wins only where training clearly did
    not help. ``meta["encoder_choice"]`` records both AUROCs and what shipped."""
    twin = untrained_detector(config or detector.config, images, category=category)
    twin.meta["validation"] = training_validation(twin, images)
    trained, untrained = detector.meta["validation"], twin.meta["validation"]
    shipped = "untrained" if untrained["val_auroc"] > trained["val_auroc"] else "trained"
    choice = {
        "shipped": shipped,
        "trained_val_auroc": trained["val_auroc"],
        "untrained_val_auroc": untrained["val_auroc"],
        "digest": trained["digest"],
    }
    if shipped == "trained":
        detector.meta["encoder_choice"] = choice
        return detector
    # The training record (steps, times, loss) stays with the bundle that did not use it.
    twin.meta = {**detector.meta, **twin.meta, "encoder_choice": choice}
    return twin


def evaluate_category(
    detector: Detector,
    data_root: str | Path,
    category: str | None = None,
    *,
    pixel: bool = True,
    map_mode: str = "auto",
    on_maps: Callable[[MapBatch], None] | None = None,
) -> Evaluation:
    """Scores ``<data_root>/<category>/test`` (category defaults to the one the detector was trained on);
    pixel metrics too where masks exist, unless ``pixel`` is false; ``on_maps`` sees each pass's maps."""
    category = category or detector.category
    if not category:
        raise ConfigError("category: the detector does not record its category; pass --category")
    samples = list_samples(data_root, category, "test")
    return evaluate_detector(detector, samples, pixel=pixel, map_mode=map_mode, on_maps=on_maps)
