"""``full_benchmark.py --ensemble N``: the first N seeds of each category, combined into one detector.

The paper's 96.1 is an ensemble of five models, reported next to the 95.2 of single models; so the
benchmark keeps its per-seed rows and adds one ensemble row per category. The members are the
benchmark's own finished runs (loaded back from MLflow, so a resumed benchmark needs no retraining);
the ensemble is standardised and calibrated on the category's training images, evaluated on its test
split, saved as one bundle under ``<out>/ensembles/<category>`` and logged as a child MLflow run with
its own pyfunc model. Runs in the driver: scoring only, no training.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from cutpaste.atomic import atomic_write_text
from cutpaste.data.images import load_images
from cutpaste.data.layout import list_samples
from cutpaste.ensemble import build_ensemble
from cutpaste.storage import materialize
from cutpaste.workflow import evaluate_category
from pipelines import tracking
from pipelines.pyfunc_model import TAG_SHA256, log_detector_model


def _members(records: list[dict[str, Any]], category: str, size: int) -> list[dict[str, Any]]:
    finished = [r for r in records if r["category"] == category and r["status"] == "finished"]
    return sorted(finished, key=lambda r: r["seed"])[:size]


def _load_member(model_uri: str) -> Any:
    """The member's detector, in memory; its downloaded copy goes (MLflow would leave it in /tmp for good)."""
    with tempfile.TemporaryDirectory(prefix="cutpaste-member-") as tmp:
        return mlflow.pyfunc.load_model(model_uri, dst_path=tmp).unwrap_python_model().detector


def _ensemble_category(
    bench: Any, category: str, members: list[dict[str, Any]], rule: str, out: Path
) -> tuple[dict[str, Any], Path]:
    detectors = [_load_member(r["model_uri"]) for r in members]
    root = materialize(bench.data, [category], endpoint_url=bench.s3_endpoint)
    size = max(d.config.image_size for d in detectors)
    train_images = load_images([s.path for s in list_samples(root, category, "train")], size)
    ensemble = build_ensemble(
        detectors,
        train_images,
        rule=rule,
        category=category,
        meta={"member_runs": [r["run_name"] for r in members], "member_seeds": [r["seed"] for r in members]},
    )
    evaluation = evaluate_category(ensemble, root, category)
    directory = out / "ensembles" / category
    ensemble.save(directory)
    atomic_write_text(json.dumps(evaluation.to_dict()), directory / "evaluation.json")
    member_aurocs = [float(r["image_auroc"]) for r in members]
    row = {
        "category": category,
        "members": len(members),
        "rule": rule,
        "member_image_auroc_mean": statistics.fmean(member_aurocs),
        "member_image_auroc_best": max(member_aurocs),
        "ensemble_image_auroc": evaluation.metrics.image_auroc,
        "ensemble_threshold": ensemble.threshold,
        "status": "finished",
    }
    if evaluation.pixel is not None and evaluation.pixel.pixel_auroc is not None:
        row.update(ensemble_pixel_auroc=evaluation.pixel.pixel_auroc, ensemble_aupro=evaluation.pixel.aupro)
    return row, directory


def run_ensembles(bench: Any, records: list[dict[str, Any]], size: int, rule: str) -> list[dict[str, Any]]:
    """One ensemble row per category; a category with fewer than ``size`` finished seeds is a failed row."""
    client = MlflowClient(bench.mlflow_uri, registry_uri=bench.mlflow_uri)
    experiment_id = tracking.ensure_experiment(client, bench.experiment)
    parent_id = tracking.find_run(
        client, experiment_id, {tracking.TAG_BENCHMARK: bench.benchmark_id, tracking.TAG_ROLE: "benchmark"}
    )
    out = Path(bench.out)
    rows: list[dict[str, Any]] = []
    for category in bench.categories:
        members = _members(records, category, size)
        if len(members) < size:
            reason = f"only {len(members)} of {size} member runs finished"
            rows.append({"category": category, "members": len(members), "rule": rule, "status": f"failed: {reason}"})
            continue
        name = f"{bench.benchmark_id}-{category}-ensemble{size}-{rule}"
        try:
            row, directory = _ensemble_category(bench, category, members, rule, out)
            run_id, _ = tracking.find_or_create_run(
                client,
                experiment_id,
                name=name,
                tags={
                    tracking.TAG_BENCHMARK: bench.benchmark_id,
                    tracking.TAG_RUN_KEY: name,
                    tracking.TAG_ROLE: "ensemble",
                },
                parent_run_id=parent_id,
            )
            tracking.log_params(client, run_id, {"category": category, "ensemble.size": size, "ensemble.rule": rule})
            names = ("ensemble_image_auroc", "member_image_auroc_mean", "ensemble_threshold", "ensemble_pixel_auroc")
            metrics = {k: row[k] for k in names if k in row}
            tracking.MetricBuffer(bench.mlflow_uri, run_id).log(metrics, 0)
            client.log_artifact(run_id, str(directory / "evaluation.json"), "results")
            row["model_uri"], row["sha256"] = log_detector_model(directory, run_id=run_id)
            client.set_tag(run_id, TAG_SHA256, row["sha256"])
            tracking.finish_run(client, run_id)
        except Exception as exc:  # one category's ensemble must not lose the others'
            row = {"category": category, "members": size, "rule": rule, "status": f"failed: {exc}"[:300]}
        rows.append(row)
    paths = write_ensemble_table(rows, out)
    if parent_id is not None:
        for path in paths:
            client.log_artifact(parent_id, str(path), "results")
    return rows


def ensemble_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| category | members | rule | members' mean image AUROC | ensemble image AUROC | gain |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "finished":
            lines.append(f"| {r['category']} | {r['members']} | {r['rule']} | - | {r['status']} | - |")
            continue
        mean, ens = 100 * r["member_image_auroc_mean"], 100 * r["ensemble_image_auroc"]
        lines.append(f"| {r['category']} | {r['members']} | {r['rule']} | {mean:.1f} | {ens:.1f} | {ens - mean:+.1f} |")
    return "\n".join(lines) + "\n"


def write_ensemble_table(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    markdown, data = out / "ensembles.md", out / "ensembles.json"
    atomic_write_text(ensemble_markdown(rows), markdown)
    atomic_write_text(json.dumps(rows, indent=2), data)
    return [markdown, data]
