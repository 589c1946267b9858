"""The paper's Table 1 protocol on Ray: every category x N seeds, evaluated, tracked in MLflow.

    python pipelines/full_benchmark.py                  # embedded default: local Ray, synthetic data, sqlite MLflow
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        .venv/bin/python pipelines/full_benchmark.py --data s3://bucket/mvtec --preset paper --seeds 5 \\
        --gpus-per-run 0.25 --mlflow-uri http://mlflow:5000 --storage s3://bucket/checkpoints --benchmark-id b1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cutpaste.errors import CutPasteError
from pipelines.descriptions import experiment_url
from pipelines.launcher import (
    RUNS_DIR,
    absolute_data,
    add_common_arguments,
    base_config,
    connect_ray,
    resolve_categories,
    tracking_uri,
)

DEMO_CATEGORIES = 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(
        parser,
        experiment="cutpaste-benchmark",
        data_help="dataset root (local path or s3://bucket/prefix); default: synthetic demo data",
    )
    parser.add_argument("--seeds", type=int, default=1, help="runs per category, seeds base..base+N-1 (paper: 5)")
    parser.add_argument(
        "--ensemble", type=int, default=0, help="also combine the first N seeds of each category into one detector"
    )
    parser.add_argument("--ensemble-rule", default="mean", help="mean (default), max or logdensity")
    parser.add_argument("--benchmark-id", help="names this benchmark; the same id again resumes it")
    parser.add_argument("--gpus-per-run", type=float, default=None, help="GPUs per run (0.25 shares a GPU by four)")
    parser.add_argument("--workers-per-run", type=int, default=1, help="DDP workers per run (each its own GPU)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--out", help="results directory (default runs/<benchmark-id>)")
    parser.add_argument("--storage", help="Ray checkpoint storage, local path or s3:// (default <out>/ray_storage)")
    parser.add_argument(
        "--max-failures",
        type=int,
        default=1,
        help="infrastructure faults (lost workers, controller, MLflow, S3) a run is retried for; never bad data",
    )
    parser.add_argument(
        "--tracking-timeout", type=float, default=120.0, help="seconds a finished run waits for MLflow to come back"
    )
    parser.add_argument("--wait-for-resources", type=float, default=0.0, help="seconds to wait for GPUs to join")
    parser.add_argument("--no-register", action="store_true", help="do not register champion models")
    parser.add_argument(
        "--system-metrics", action="store_true", help="log each run's CPU, memory and GPU use at every logged step"
    )
    return parser


def _check_flags(args: argparse.Namespace) -> None:
    import os

    from pipelines import faults
    from pipelines.benchmark import BenchmarkError

    faults.check_fault_setting(os.environ.get(faults.FAULT_ENV))
    if args.max_failures < 0:
        raise BenchmarkError(f"--max-failures must be >= 0, got {args.max_failures}")
    if args.seeds < 1:
        raise BenchmarkError(f"--seeds must be >= 1, got {args.seeds}")
    if args.workers_per_run < 1:
        raise BenchmarkError(f"--workers-per-run must be >= 1, got {args.workers_per_run}")
    if args.ensemble and not 2 <= args.ensemble <= args.seeds:
        raise BenchmarkError(f"--ensemble {args.ensemble}: members are seeds: 2 <= N <= --seeds ({args.seeds})")
    if args.ensemble_rule not in ("mean", "max", "logdensity"):
        raise BenchmarkError(f"--ensemble-rule {args.ensemble_rule!r}: choose mean, max or logdensity")
    gpus = args.gpus_per_run or 0.0
    if args.workers_per_run > 1 and 0 < gpus / args.workers_per_run < 1:
        raise BenchmarkError(
            f"--gpus-per-run {gpus:g} over {args.workers_per_run} workers would make DDP workers share a GPU; "
            "give each worker at least one GPU"
        )


def _data_root(data: str | None, runs_dir: Path) -> str:
    """``--data`` as workers can reach it; without it, the synthetic demo categories (made once)."""
    if data is not None:
        return absolute_data(data)
    from cutpaste.data.synth import generate_dataset

    data_dir = runs_dir / "demo-data"
    print(f"no --data: using synthetic demo data in {data_dir}", flush=True)
    generate_dataset(data_dir, categories=DEMO_CATEGORIES, size=128, seed=0)
    return str(data_dir)


def _resolve(args: argparse.Namespace):
    from pipelines.benchmark import BenchmarkConfig

    _check_flags(args)
    train_config = base_config(args)
    benchmark_id = args.benchmark_id or time.strftime("bench-%Y%m%d-%H%M%S")
    runs_dir = RUNS_DIR.resolve()
    data = _data_root(args.data, runs_dir)
    categories = resolve_categories(data, args.categories, args.s3_endpoint)
    uri = tracking_uri(args, runs_dir)
    out = Path(args.out or runs_dir / benchmark_id).resolve()
    bench = BenchmarkConfig(
        benchmark_id=benchmark_id,
        data=data,
        categories=tuple(categories),
        seeds=args.seeds,
        mlflow_uri=uri,
        out=str(out),
        storage=args.storage or str(out / "ray_storage"),
        experiment=args.experiment,
        gpus_per_run=args.gpus_per_run or 0.0,
        workers_per_run=args.workers_per_run,
        cpus_per_worker=args.cpus_per_worker,
        max_failures=args.max_failures,
        tracking_timeout_s=args.tracking_timeout,
        s3_endpoint=args.s3_endpoint,
        register_models=not args.no_register,
        system_metrics=args.system_metrics,
        artifact_root=str(runs_dir / "mlartifacts") if uri.startswith("sqlite:") else None,
    )
    return bench, train_config


def _experiment_id(bench) -> str:
    from mlflow import MlflowClient

    try:
        return MlflowClient(bench.mlflow_uri).get_experiment_by_name(bench.experiment).experiment_id
    except Exception:  # only for the printed link: the results are written already
        return "0"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from pipelines.benchmark import run_benchmark, wait_for_resources
        from pipelines.tracking import check_reachable, redact_uri

        bench, train_config = _resolve(args)
        check_reachable(bench.mlflow_uri)
        connect_ray(args.ray_address)
        wait_for_resources(bench.gpus_per_run, bench.cpus_per_worker * bench.workers_per_run, args.wait_for_resources)
        print(
            f"benchmark {bench.benchmark_id}: {len(bench.categories)} categories x {bench.seeds} seeds, "
            f"preset {train_config.preset} ({train_config.steps} steps at {train_config.image_size}px), "
            f"tracking {redact_uri(bench.mlflow_uri)}",
            flush=True,
        )
        records, paths = run_benchmark(bench, train_config)
        ensembles = []
        if args.ensemble:
            from pipelines.ensemble_benchmark import ensemble_markdown, run_ensembles

            ensembles = run_ensembles(bench, records, args.ensemble, args.ensemble_rule)
    except CutPasteError as exc:
        print(f"full_benchmark: error: {exc}", file=sys.stderr)
        return 2
    print()
    print(paths["markdown"].read_text())
    print(f"results: {', '.join(str(p) for p in paths.values())}")
    if ensembles:
        print(f"\nensembles of {args.ensemble} seeds ({args.ensemble_rule} rule), next to their members:")
        print(ensemble_markdown(ensembles))
    experiment_id = _experiment_id(bench)
    if bench.mlflow_uri.startswith("sqlite:"):
        print(f"open the MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {bench.mlflow_uri} --port 5000")
        print(f"the runs:            {experiment_url('http://127.0.0.1:5000', experiment_id)}")
    else:
        print(f"MLflow UI: {experiment_url(redact_uri(bench.mlflow_uri), experiment_id)}")
    failed = [r for r in records if r["status"] != "finished" or r.get("registration_error")]
    failed += [r for r in ensembles if r["status"] != "finished"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
