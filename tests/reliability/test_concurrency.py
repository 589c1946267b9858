"""Two benchmarks with different ids at once on one Ray, one MLflow server, one checkpoint storage root:
runs, checkpoints and registry versions stay apart (issue 8, item 5)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from tests.reliability.bench_thread import BenchmarkThread

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_benchmarks_at_once_do_not_mix(stack):
    category = stack.categories[0]
    shared_storage = stack.work / "shared-storage"
    benches = [BenchmarkThread(stack, name, category, storage=str(shared_storage)) for name in ("conc-a", "conc-b")]
    for bench in benches:
        bench.start()
    for bench in benches:
        bench.join(timeout=600)
        assert bench.code == 0, f"{bench.run_name} ended with {bench.code}"

    client = MlflowClient(stack.mlflow.uri)
    experiment = client.get_experiment_by_name("cutpaste-benchmark")
    child_ids = {}
    for bench, name in zip(benches, ("conc-a", "conc-b"), strict=True):
        runs = client.search_runs([experiment.experiment_id], f"tags.`cutpaste.benchmark_id` = '{name}'")
        parents = [r for r in runs if r.data.tags.get("cutpaste.role") == "benchmark"]
        children = [r for r in runs if r.data.tags.get("cutpaste.role") == "run"]
        assert len(parents) == 1 and [c.info.run_name for c in children] == [bench.run_name]
        assert children[0].data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert parents[0].info.status == children[0].info.status == "FINISHED"
        child_ids[name] = children[0].info.run_id
        # Each run's checkpoints sit under its own name in the shared storage root.
        assert bench.checkpoints(), f"no checkpoints under {bench.run_dir}"
        results = (bench.out / "results.md").read_text()
        assert f"| {category} |" in results
    assert {p.name for p in shared_storage.iterdir() if p.is_dir()} >= {b.run_name for b in benches}

    # One registry version per benchmark, each pointing at that benchmark's run and tagged with its id.
    versions = client.search_model_versions(f"name = 'cutpaste-{category}'")
    mine = {v.run_id: v for v in versions if v.run_id in child_ids.values()}
    assert len(mine) == 2
    for name, run_id in child_ids.items():
        assert mine[run_id].tags["cutpaste.benchmark_id"] == name
    champion = client.get_model_version_by_alias(f"cutpaste-{category}", "champion")
    assert champion.run_id in child_ids.values()
