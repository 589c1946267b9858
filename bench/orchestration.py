"""What the Ray + MLflow pipeline costs over the bare library, on this machine with the `ci` preset.

    .venv/bin/python bench/orchestration.py --categories 2 --repeats 3

Times the same training + evaluation of K synthetic categories (1) sequentially with the library in one
process and (2) through `pipelines.benchmark.run_benchmark` on a local Ray with a sqlite MLflow store
(model logging and registration included), alternating the two `--repeats` times so machine noise hits
both alike; medians are reported. Start-up is measured separately: Ray's (`ray.init`) and Ray Train's own
per-run cost (`TorchTrainer.fit` of a loop that only imports the worker code and reports once: the
controller, worker and helper actor processes every run starts). JSON: `pipeline_s`, `library_s`,
`overhead` (= pipeline_s / library_s - 1), `ray_startup_s`, `train_run_startup_s`,
`overhead_beyond_startup` (the runs' start-up, their "queued" phase, taken out) and per-run `phases`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import ray
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from cutpaste.atomic import atomic_write_text
from cutpaste.data.synth import generate_dataset
from cutpaste.presets import preset
from cutpaste.workflow import evaluate_category, train_category
from pipelines.benchmark import PREEMPTION_WATCHER_ENV, BenchmarkConfig, run_benchmark


def _empty_loop(_config: dict) -> None:
    import ray.train

    import pipelines.train_run  # noqa: F401  (what a real worker imports before training)

    ray.train.report({"done": 1})


def train_run_startup(storage: Path) -> float:
    """Wall time of one Ray Train run that does no work, on one CPU, with the pipeline's settings."""
    import os

    os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")
    started = time.perf_counter()
    TorchTrainer(
        _empty_loop,
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"empty-{time.time_ns()}", storage_path=str(storage)),
    ).fit()
    return time.perf_counter() - started


def _library_seconds(config, work: Path, names: list[str], repeat: int) -> tuple[float, dict[str, float]]:
    """The library alone: every category trained and evaluated in turn in this process; (seconds, AUROCs)."""
    started = time.perf_counter()
    auroc = {}
    for name in names:
        out = work / f"lib{repeat}" / name
        run = train_category(config, work / "data", name, out, device="cpu", progress=False)
        auroc[name] = evaluate_category(run.detector, work / "data", name).metrics.image_auroc
    return time.perf_counter() - started, auroc


def _pipeline(config, work: Path, names: list[str], repeat: int) -> tuple[float, list[dict]]:
    """The same through ``run_benchmark`` on the local Ray and a sqlite MLflow store; (seconds, records)."""
    bench = BenchmarkConfig(
        benchmark_id=f"orchestration-{repeat}",
        data=str(work / "data"),
        categories=tuple(names),
        seeds=1,
        mlflow_uri=f"sqlite:///{work / 'mlflow.db'}",
        out=str(work / f"out{repeat}"),
        storage=str(work / "storage"),
        artifact_root=str(work / "artifacts"),
    )
    started = time.perf_counter()
    records, _ = run_benchmark(bench, config)
    return time.perf_counter() - started, records


def _measure(config, work: Path, names: list[str], repeats: int) -> dict:
    """Alternating repeats of (a no-op Ray Train run, the library, the pipeline), after Ray's own start."""
    samples: dict = {"pipeline_s": [], "library_s": [], "train_run_startup_s": [], "overhead_beyond_startup": []}
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False)
    measured: dict = {"ray_startup_s": time.perf_counter() - started, "samples": samples}
    for repeat in range(repeats):
        samples["train_run_startup_s"].append(train_run_startup(work / "empty"))
        library_s, measured["library_auroc"] = _library_seconds(config, work, names, repeat)
        samples["library_s"].append(library_s)
        pipeline_s, records = _pipeline(config, work, names, repeat)
        samples["pipeline_s"].append(pipeline_s)
        # Seconds per run in each state: queued (until its worker started training), training,
        # evaluating, logging (MLflow, driver side).
        measured["phases"] = {r["category"]: {k: round(v, 2) for k, v in r.get("phases", {}).items()} for r in records}
        measured["records"] = records
        # The runs start together, so their start-up costs the wall clock once: the longest queue.
        queued = max((r.get("phases", {}).get("queued", 0.0) for r in records), default=0.0)
        samples["overhead_beyond_startup"].append((pipeline_s - queued) / library_s - 1)
        print(f"repeat {repeat}: library {library_s:.1f}s, pipeline {pipeline_s:.1f}s", flush=True)
    ray.shutdown()
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", type=int, default=2)
    parser.add_argument("--preset", default="ci")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/orchestration.json")
    args = parser.parse_args()
    config = preset(args.preset)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        names = generate_dataset(work / "data", categories=args.categories, size=64, seed=0)
        measured = _measure(config, work, names, args.repeats)
    samples = measured["samples"]
    pipeline_s, library_s = statistics.median(samples["pipeline_s"]), statistics.median(samples["library_s"])
    result = {
        "pipeline_s": pipeline_s,
        "library_s": library_s,
        "overhead": pipeline_s / library_s - 1,
        "ray_startup_s": measured["ray_startup_s"],
        "train_run_startup_s": statistics.median(samples["train_run_startup_s"]),
        # The same, less the runs' own start-up (their longest "queued" phase): median over repeats.
        "overhead_beyond_startup": statistics.median(samples["overhead_beyond_startup"]),
        "samples": samples,
        "categories": len(names),
        "preset": config.preset,
        "library_auroc": measured["library_auroc"],
        "pipeline_auroc": {r["category"]: r.get("image_auroc") for r in measured["records"]},
        "phases": measured["phases"],
        "note": "medians of alternating repeats; library: sequential in one process (2 threads); pipeline: "
        "runs in parallel, 1 CPU each, plus MLflow logging of params, metrics, density and pyfunc model, "
        "and registry",
    }
    print(json.dumps({k: v for k, v in result.items() if k != "note"}, indent=2))
    atomic_write_text(json.dumps(result, indent=2), Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
