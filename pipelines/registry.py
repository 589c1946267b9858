"""The benchmark's champions: per category the seed with the best validation AUROC, registered in MLflow's
model registry as ``cutpaste-<category>`` with the alias ``champion``.

MLflow's registry has no notion of "the best run of a group"; the choice is ours (validation, never test),
and registering goes through ``tracking.register_champion`` (idempotent per run, so a retry is safe).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from mlflow import MlflowClient

from pipelines import faults, tracking
from pipelines.benchmark_config import TAG_VALIDATION_DIGEST, BenchmarkConfig
from pipelines.benchmark_retries import with_tracking_retries
from pipelines.pyfunc_model import TAG_SHA256


def choose_champions(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each category's champion among its finished runs: the highest validation AUROC (synthetic anomalies
    against out-of-fold training scores), ties and runs without one going to the lowest seed. AUROCs
    compare only on one validation set: the runs of the digest most of the category's runs share (ties:
    the lowest seed's) compete, so a run scored on other anomalies never wins by them. Test metrics are
    in the records for the table; this function never reads them."""
    finished: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["status"] == "finished":
            finished.setdefault(r["category"], []).append(r)

    def key(r: dict[str, Any]) -> tuple[float, int]:
        val = r.get("val_auroc")
        return (float("-inf") if val is None else float(val), -int(r["seed"]))

    best: dict[str, dict[str, Any]] = {}
    for category, runs in finished.items():
        counts = Counter(r.get("validation_digest") or "" for r in runs)
        lowest_seed = min(runs, key=lambda r: int(r["seed"])).get("validation_digest") or ""
        digest = max(counts, key=lambda d: (counts[d], d == lowest_seed))
        best[category] = max((r for r in runs if (r.get("validation_digest") or "") == digest), key=key)
    return best


def champion_tags(bench: BenchmarkConfig, r: dict[str, Any]) -> dict[str, str]:
    """A registered version's tags: its benchmark id (versions from benchmarks sharing a registry stay
    attributable), its validation AUROC (what chose it) and its test AUROC (reported, never read for the
    choice)."""
    return {
        tracking.TAG_BENCHMARK: bench.benchmark_id,
        "cutpaste.run_name": r["run_name"],
        "cutpaste.chosen_by": "val_auroc (held-in normals out-of-fold + synthetic anomalies)",
        "cutpaste.val_auroc": f"{r.get('val_auroc')}",
        TAG_VALIDATION_DIGEST: f"{r.get('validation_digest')}",
        "cutpaste.test_image_auroc": f"{r.get('image_auroc')}",
        # The digest the version's loaders insist on (also in the model's model_config).
        TAG_SHA256: f"{r.get('sha256')}",
    }


def register_champions(client: MlflowClient, records: list[dict[str, Any]], bench: BenchmarkConfig) -> None:
    """Registers each category's champion (:func:`choose_champions`) as ``cutpaste-<category>@champion``.
    MLflow lost on the way is waited for and the registration tried again (it is idempotent),
    ``--max-failures`` times; a registration that still fails is noted in the record, not raised."""
    for category, r in sorted(choose_champions(records).items()):
        name = f"cutpaste-{category}"
        try:
            version = with_tracking_retries(
                bench,
                f"registering {name}",
                tracking.register_champion,
                client,
                name,
                r["mlflow_run_id"],
                model_uri=r["model_uri"],
                aliases=("champion",),
                tags=champion_tags(bench, r),
            )
        except Exception as exc:
            # The run's results stay valid; only the registry step failed, and the exit code says so.
            r["registration_error"] = faults.describe(exc)
            print(f"could not register {name}: {r['registration_error']}", flush=True)
            continue
        r["registered_version"] = version
        print(f"registered {name} version {version} as @champion ({r['run_name']})", flush=True)
