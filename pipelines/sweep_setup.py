"""A sweep's flags checked and resolved (search space, base config, categories, tracking URI, directory)
before Ray or MLflow is touched, so a bad flag costs no cluster time."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cutpaste.config import TrainConfig
from cutpaste.errors import ConfigError, CutPasteError
from cutpaste.presets import preset
from pipelines.launcher import RUNS_DIR, absolute_data, base_config, resolve_categories, tracking_uri
from pipelines.search_space import (
    METRICS,
    SPACES,
    SearchSpace,
    SearchSpaceError,
    dimensions,
    load_space,
    trial_overrides,
)
from pipelines.sweep_trial import TRIAL_DRIVER_CPU

EXPERIMENT = "cutpaste-sweep"
SEARCHES = ("random", "grid", "optuna")
SCHEDULERS = ("asha", "fifo")


class SweepError(CutPasteError):
    """The sweep cannot start: bad flags, unknown categories, a metric no trial reports."""


def check_flags(args: argparse.Namespace) -> None:
    """The flags that need nothing but themselves, checked before anything starts."""
    if args.data is None:
        raise SweepError("--data is required: the dataset root (local path or s3://bucket/prefix)")
    args.data = absolute_data(args.data)
    if args.num_samples < 1:
        raise SweepError(f"--num-samples must be >= 1 (zero trials would choose nothing), got {args.num_samples}")
    if args.metric not in METRICS:
        raise SweepError(f"--metric {args.metric!r}: no trial reports it; trials report {', '.join(METRICS)}")
    if args.search == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise SweepError("--search optuna needs the optuna package (pip install 'cutpaste[cluster]')") from None
    if args.cpus_per_trial <= TRIAL_DRIVER_CPU:
        raise SweepError(f"--cpus-per-trial must be > {TRIAL_DRIVER_CPU}, got {args.cpus_per_trial}")
    if not 0 < args.holdout_fraction < 1:
        raise SweepError(f"--holdout-fraction must lie in (0, 1), got {args.holdout_fraction}")


def resolve(args: argparse.Namespace) -> tuple[SearchSpace, TrainConfig, TrainConfig, list[str], str, Path]:
    """Checks every flag, then resolves them: (space, base config, its preset, categories, tracking URI,
    sweep directory). A bad space, config or validation folder fails here, before any trial starts."""
    check_flags(args)
    base = base_config(args)
    if args.space in SPACES:
        space = SPACES[args.space].validate(base)
    elif Path(args.space).suffix == ".json" or Path(args.space).exists():
        space = load_space(args.space).validate(base)
    else:
        raise SearchSpaceError(f"--space {args.space!r}: neither a JSON file nor one of {', '.join(SPACES)}")
    base_preset = preset(base.preset)
    # Every point of the space must make a valid config: check the corners before any trial starts.
    check_corners(space, base)
    if args.validation_folder:
        from cutpaste.evaluation.validation import folder_validation

        folder_validation(args.validation_folder, size=32)
    categories = resolve_categories(args.data, args.categories, args.s3_endpoint)
    args.sweep_id = args.sweep_id or time.strftime("sweep-%Y%m%d-%H%M%S")
    runs_dir = RUNS_DIR.resolve()
    uri = tracking_uri(args, runs_dir)
    out = Path(args.out or runs_dir / args.sweep_id).resolve()
    return space, base, base_preset, categories, uri, out


def check_corners(space: SearchSpace, base: TrainConfig) -> None:
    """Both corners of the space (every searched value at its low, then its high end) make valid configs."""
    searched, fixed = dimensions(space)
    for corner in ("low", "high"):
        point = dict(fixed)
        for key, value in searched.items():
            point[key] = (
                (value[0] if corner == "low" else value[-1]) if isinstance(value, tuple) else getattr(value, corner)
            )
        try:
            base.override(trial_overrides(point).overrides, source=f"search space ({corner} corner)")
        except ConfigError as exc:
            raise SearchSpaceError(str(exc)) from None
