"""Ray Tune sweeps over CutPaste augmentation, optimiser, model and ensemble settings, per category.

    python pipelines/tune_sweep.py --data DIR --categories bottle --num-samples 32 --preset demo \\
        --search random --export best.json
    python pipelines/full_benchmark.py --data DIR --categories bottle --config best.json --seeds 5

Each trial is a driver function that builds a ``TorchTrainer`` (the benchmark's own training function,
``pipelines/train_run.py``, in validation-report mode) and forwards its reports to Tune through
``TuneReportCallback``. Trials are ranked on a validation set disjoint from the test split (held-out
normal training images + Perlin-texture anomalies, or ``--validation-folder``); the test split is read
only after the sweep, for the chosen configuration, and reported apart. MLflow holds a parent run per
sweep and a child per trial; only this driver process writes to it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from cutpaste.config import TrainConfig, flatten
from cutpaste.errors import CutPasteError
from pipelines.launcher import add_common_arguments, connect_ray
from pipelines.search_space import METRICS, SPACES, SearchSpace, dimensions
from pipelines.sweep_report import report_category
from pipelines.sweep_setup import EXPERIMENT, SCHEDULERS, SEARCHES, SweepError, resolve
from pipelines.sweep_trial import (
    TRIAL_DRIVER_CPU,
    MlflowTrials,
    ReleaseTrainerGroups,
    SweepSettings,
    run_trial,
    trial_config,
    trial_outcome,
)

__all__ = ["EXPERIMENT", "SweepError", "build_parser", "main", "run_sweep"]


def param_space(space: SearchSpace, search: str) -> dict[str, Any]:
    """Tune domains for the searched dimensions (fixed ones travel in :class:`SweepSettings`)."""
    searched, _ = dimensions(space)
    out: dict[str, Any] = {}
    for key, value in searched.items():
        if isinstance(value, tuple):
            out[key] = tune.grid_search(list(value)) if search == "grid" else tune.choice(list(value))
        else:
            out[key] = (tune.loguniform if value.log else tune.uniform)(value.low, value.high)
    return out


def max_concurrent_trials(gpus_per_trial: float, cpus_per_trial: float) -> int:
    """As many trials as the cluster's GPUs hold (CPUs on a CPU-only cluster), at least one."""
    import ray

    total = ray.cluster_resources()
    if gpus_per_trial > 0:
        return max(1, int(total.get("GPU", 0.0) // gpus_per_trial))
    return max(1, int(total.get("CPU", 1.0) // max(cpus_per_trial, 1e-6)))


def config_difference(config: TrainConfig, base: TrainConfig) -> dict[str, Any]:
    """``config`` as a short JSON difference from the preset ``base`` (what ``--config`` files hold)."""
    mine, theirs = flatten(config), flatten(base)
    out: dict[str, Any] = {"preset": base.preset}
    for key, value in mine.items():
        if key == "preset" or value == theirs.get(key):
            continue
        head, _, rest = key.partition(".")
        value = list(value) if isinstance(value, tuple) else value
        if rest:
            out.setdefault(head, {})[rest] = value
        else:
            out[key] = value
    return out


def sweep_category(
    settings: SweepSettings,
    space: SearchSpace,
    *,
    search: str,
    scheduler: str,
    num_samples: int,
    metric: str,
    mlflow_uri: str,
    experiment_id: str,
    parent_id: str,
    base_preset: TrainConfig,
    tune_storage: str,
) -> dict[str, Any]:
    """Runs one category's Tuner; returns the best finished trial, its config and the ranked trials."""
    base = TrainConfig.from_dict(settings.base_config)
    chosen, search_alg = _trial_scheduler(scheduler, space, base), _search_algorithm(search, base)
    trainable = tune.with_resources(tune.with_parameters(run_trial, settings=settings), {"cpu": TRIAL_DRIVER_CPU})
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(space, search),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode="max",
            num_samples=num_samples,
            scheduler=chosen,
            search_alg=search_alg,
            max_concurrent_trials=max_concurrent_trials(settings.gpus_per_trial, settings.cpus_per_trial),
        ),
        run_config=tune.RunConfig(
            name=f"{settings.sweep_id}-{settings.category}",
            storage_path=tune_storage,
            verbose=1,  # Tune's trial table in the job log
            callbacks=[MlflowTrials(mlflow_uri, experiment_id, parent_id, settings, metric), ReleaseTrainerGroups()],
        ),
    )
    rows = [_trial_row(settings, result, metric) for result in tuner.fit()]
    ranked = _rank_trials(rows, metric, settings.category)
    return _category_outcome(settings, space, ranked, base_preset, num_trials=len(rows))


def _max_iterations(space: SearchSpace, base: TrainConfig) -> int:
    """The most reports one trial can make (every ensemble member reports at each checkpoint and once more
    at its end, plus two): ASHA's ``max_t``, so no trial is cut for reaching it."""
    steps = max((*space.extra.get("steps", ()), base.steps))
    evals_per_member = math.ceil(steps / base.checkpoint_every) + 1
    return evals_per_member * max(space.ensemble_size) + 2


def _trial_scheduler(scheduler: str, space: SearchSpace, base: TrainConfig) -> Any:
    """ASHA stops the weakest trials at each rung; FIFO lets every trial run to its end."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    max_t = _max_iterations(space, base)
    if scheduler == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=2, reduction_factor=2)
    return FIFOScheduler()


def _search_algorithm(search: str, base: TrainConfig) -> Any:
    """Optuna's TPE, seeded from the base config so a sweep samples the same points again; None lets Tune
    sample at random (or walk the grid)."""
    if search != "optuna":
        return None
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(seed=base.seed)


def _trial_row(settings: SweepSettings, result: Any, metric: str) -> dict[str, Any]:
    """One trial of the results table, from its Tune result (its last report, its sampled point and error)."""
    metrics = dict(result.metrics or {})
    params = dict(result.config or {})
    config, size, rule = trial_config(settings, params)
    return {
        "trial_id": metrics.get("trial_id", ""),
        "variant": config.variant,
        "learning_rate": config.learning_rate,
        "steps": config.steps,
        "image_size": config.image_size,
        "image_score": config.image_score,
        "feature_density": config.feature_density,
        "feature_score": config.feature_score,
        "feature_stages": config.feature_stages,
        "pre_jitter": config.augment.pre_jitter,
        "ensemble_size": size,
        "ensemble_rule": rule,
        "iterations": metrics.get("training_iteration"),
        metric: metrics.get(metric),
        "outcome": trial_outcome(result.error is not None, bool(metrics.get("finished"))),
        "checkpoint_path": metrics.get("checkpoint_path"),
        "params": params,
        "error": str(result.error)[:500] if result.error is not None else "",
    }


def _rank_trials(rows: list[dict[str, Any]], metric: str, category: str) -> list[dict[str, Any]]:
    """Finished trials best first, then the others (stopped early or failed: never chosen, however high their
    last report); no finished trial is an error that carries the trials' errors."""
    finished = [r for r in rows if r["outcome"] == "finished" and r[metric] is not None]
    finished.sort(key=lambda r: r[metric], reverse=True)
    others = [r for r in rows if r not in finished]
    if not finished:
        errors = "; ".join(r["error"] for r in rows if r["error"])[:1000]
        raise SweepError(f"no trial of {category} finished ({len(rows)} trials){': ' + errors if errors else ''}")
    return finished + others


def _category_outcome(
    settings: SweepSettings,
    space: SearchSpace,
    ranked: list[dict[str, Any]],
    base_preset: TrainConfig,
    *,
    num_trials: int,
) -> dict[str, Any]:
    """The best trial's resolved config, and its difference from the preset (what ``--export`` writes)."""
    searched, _ = dimensions(space)
    best = ranked[0]
    config, size, rule = trial_config(settings, best["params"])
    return {
        "category": settings.category,
        "best": best,
        "config": config,
        "ensemble_size": size,
        "ensemble_rule": rule,
        "difference": config_difference(config, base_preset),
        "ranked": ranked,
        "num_trials": num_trials,
        "searched": sorted(searched),
    }


def evaluate_best(outcome: dict[str, Any], data: str, s3_endpoint: str | None) -> dict[str, Any]:
    """After the sweep: the chosen trial's detector (or ensemble) on the test split."""
    from ray.train import Checkpoint

    from cutpaste.ensemble import load_detector
    from cutpaste.storage import materialize
    from cutpaste.workflow import evaluate_category

    path = outcome["best"]["checkpoint_path"]
    if not path:
        raise SweepError(f"the best trial of {outcome['category']} left no checkpoint to evaluate")
    root = materialize(data, [outcome["category"]], endpoint_url=s3_endpoint)
    with Checkpoint(path).as_directory() as directory:
        detector = load_detector(directory)
        evaluation = evaluate_category(detector, root, outcome["category"])
    return {"test_image_auroc": evaluation.metrics.image_auroc, "test_aupr": evaluation.metrics.aupr}


@dataclass(frozen=True)
class _Sweep:
    """What every category's sweep shares: the resolved flags and the sweep's parent MLflow run."""

    args: argparse.Namespace
    space: SearchSpace
    base: TrainConfig
    base_preset: TrainConfig
    categories: list[str]
    uri: str
    out: Path
    fixed: dict[str, Any]
    client: Any
    experiment_id: str
    parent_id: str


def run_sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Validates everything, then sweeps each category in turn; returns one outcome per category."""
    from pipelines import tracking

    space, base, base_preset, categories, uri, out = resolve(args)
    tracking.check_reachable(uri)
    connect_ray(args.ray_address)
    client, experiment_id, parent_id = _open_sweep_run(args, uri, out)
    tracking.log_params(client, parent_id, _sweep_params(args, space, base, categories))
    _, fixed = dimensions(space)
    sweep = _Sweep(args, space, base, base_preset, categories, uri, out, fixed, client, experiment_id, parent_id)
    outcomes: list[dict[str, Any]] = []
    failed = False
    started = time.perf_counter()
    try:
        for category in categories:
            outcomes.append(_sweep_one(sweep, category))
    except Exception:
        failed = True
        raise
    finally:
        tracking.MetricBuffer(uri, parent_id).log({"sweep_wall_s": time.perf_counter() - started}, 0)
        tracking.finish_run(client, parent_id, failed=failed)
    return outcomes


def _open_sweep_run(args: argparse.Namespace, uri: str, out: Path) -> tuple[Any, str, str]:
    """A new parent run per sweep (a sweep is never resumed); returns (client, experiment id, run id)."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines import tracking

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    artifact_root = (out.parent / "mlartifacts") if uri.startswith("sqlite:") else None
    experiment_id = tracking.ensure_experiment(client, args.experiment, artifact_root)
    parent_id = client.create_run(
        experiment_id,
        run_name=args.sweep_id,
        tags={tracking.TAG_BENCHMARK: args.sweep_id, tracking.TAG_ROLE: "sweep"},
    ).info.run_id
    return client, experiment_id, parent_id


def _sweep_params(
    args: argparse.Namespace, space: SearchSpace, base: TrainConfig, categories: list[str]
) -> dict[str, Any]:
    """The parent run's params: enough to run the same sweep again (space, base config, search flags)."""
    dims = {k: v for k, v in space.to_dict().items() if k != "extra"} | space.extra
    params = {f"space.{k}": json.dumps(v) for k, v in dims.items()}
    params |= {f"base.{k}": v for k, v in flatten(base).items()}
    params |= {"sweep.search": args.search, "sweep.scheduler": args.scheduler, "sweep.metric": args.metric}
    params |= {"sweep.num_samples": args.num_samples, "sweep.categories": ",".join(categories)}
    return params


def _category_settings(sweep: _Sweep, category: str) -> SweepSettings:
    """What the category's trials need besides their sampled point (they get it as plain values)."""
    args = sweep.args
    return SweepSettings(
        sweep_id=args.sweep_id,
        category=category,
        data=args.data,
        base_config=sweep.base.to_dict(),
        fixed=sweep.fixed,
        storage=str(sweep.out / "train"),
        gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial,
        validation_folder=args.validation_folder,
        holdout_fraction=args.holdout_fraction,
        s3_endpoint=args.s3_endpoint,
    )


def _sweep_one(sweep: _Sweep, category: str) -> dict[str, Any]:
    """One category: its trials, then (unless ``--no-test-eval``) the chosen one on the test split, then its
    report (console, MLflow, ``--export``)."""
    args = sweep.args
    outcome = sweep_category(
        _category_settings(sweep, category),
        sweep.space,
        search=args.search,
        scheduler=args.scheduler,
        num_samples=args.num_samples,
        metric=args.metric,
        mlflow_uri=sweep.uri,
        experiment_id=sweep.experiment_id,
        parent_id=sweep.parent_id,
        base_preset=sweep.base_preset,
        tune_storage=str(sweep.out / "tune"),
    )
    if not args.no_test_eval:
        outcome["test"] = evaluate_best(outcome, args.data, args.s3_endpoint)
    report_category(sweep.client, sweep.parent_id, outcome, args, len(sweep.categories) > 1)
    return outcome


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(
        parser, experiment=EXPERIMENT, data_help="dataset root (local path or s3://bucket/prefix), required"
    )
    parser.add_argument("--num-samples", type=int, default=8, help="trials per category (grid: repeats of the grid)")
    parser.add_argument("--space", default="default", help=f"search space: {', '.join(SPACES)} or a JSON file")
    parser.add_argument("--search", choices=SEARCHES, default="random", help="random, grid, or optuna (TPE)")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="asha", help="asha early stopping or fifo")
    parser.add_argument("--metric", default="val_auroc", help=f"validation metric to maximise: {', '.join(METRICS)}")
    parser.add_argument("--validation-folder", help="labelled validation images: good/ plus defect folders")
    parser.add_argument("--holdout-fraction", type=float, default=0.2, help="train/good share held out")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0)
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--export", help="write the best config here (per category: FILE-<category>.json)")
    parser.add_argument("--sweep-id", help="names the sweep's runs (default: sweep-<time>)")
    parser.add_argument("--out", help="sweep directory (default runs/<sweep-id>)")
    parser.add_argument("--no-test-eval", action="store_true", help="do not evaluate the chosen config on test")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        started = time.perf_counter()
        outcomes = run_sweep(args)
    except CutPasteError as exc:
        print(f"tune_sweep: error: {exc}", file=sys.stderr)
        return 2
    print(f"\nsweep {args.sweep_id}: {len(outcomes)} categories in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
