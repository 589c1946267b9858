"""What the Ray + MLflow pipeline costs over the bare library, on this machine with the `ci` preset.

    .venv/bin/python bench/orchestration.py --categories 2

Times the same training + evaluation of K synthetic categories (1) sequentially with the library in one
process and (2) through `pipelines.benchmark.run_benchmark` on a local Ray with a sqlite MLflow store
(model logging and registration included). Ray's start-up is measured separately. JSON: `pipeline_s`,
`library_s`, `overhead` (= pipeline_s / library_s - 1), `ray_startup_s`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402

from cutpaste.atomic import atomic_write_text  # noqa: E402
from cutpaste.config import preset  # noqa: E402
from cutpaste.data.synth import generate_dataset  # noqa: E402
from cutpaste.workflow import evaluate_category, train_category  # noqa: E402
from pipelines.benchmark import BenchmarkConfig, run_benchmark  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", type=int, default=2)
    parser.add_argument("--preset", default="ci")
    parser.add_argument("--out", default="bench/results/orchestration.json")
    args = parser.parse_args()
    config = preset(args.preset)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        names = generate_dataset(work / "data", categories=args.categories, size=64, seed=0)

        started = time.perf_counter()
        library_auroc = {}
        for name in names:
            run = train_category(config, work / "data", name, work / "lib" / name, device="cpu", progress=False)
            library_auroc[name] = evaluate_category(run.detector, work / "data", name).metrics.image_auroc
        library_s = time.perf_counter() - started

        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        ray_startup_s = time.perf_counter() - started
        bench = BenchmarkConfig(
            benchmark_id="orchestration",
            data=str(work / "data"),
            categories=tuple(names),
            seeds=1,
            mlflow_uri=f"sqlite:///{work / 'mlflow.db'}",
            out=str(work / "out"),
            storage=str(work / "storage"),
            artifact_root=str(work / "artifacts"),
        )
        started = time.perf_counter()
        records, _ = run_benchmark(bench, config)
        pipeline_s = time.perf_counter() - started
        ray.shutdown()
    result = {
        "pipeline_s": pipeline_s,
        "library_s": library_s,
        "overhead": pipeline_s / library_s - 1,
        "ray_startup_s": ray_startup_s,
        "categories": len(names),
        "preset": config.preset,
        "library_auroc": library_auroc,
        "pipeline_auroc": {r["category"]: r.get("image_auroc") for r in records},
        "note": "library: sequential in one process (2 threads); pipeline: runs in parallel, 1 CPU each, "
        "plus MLflow logging of params, metrics, density and pyfunc model, and registry",
    }
    print(json.dumps({k: v for k, v in result.items() if k != "note"}, indent=2))
    atomic_write_text(json.dumps(result, indent=2), Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
