"""What the driver writes about runs: a finished run's metrics, artifacts and model in its MLflow child, the
descriptions of the run pages, and at the end the results files, logged under the parent run.

Only the driver's main thread calls this (one writer per store keeps a sqlite store consistent). MLflow's
fluent ``mlflow.start_run`` is not used: it keeps one active run per thread, and the driver writes into many
runs by id, so everything goes through ``MlflowClient`` (see ``pipelines/tracking.py``).
"""

from __future__ import annotations

import json
import resource
import shutil
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from cutpaste.atomic import atomic_write_text
from cutpaste.detector import BUNDLE_NAME, verify_bundle
from cutpaste.evaluation.report import RunRecord, summarise, to_markdown, write_results
from cutpaste.integrity import load_weights
from cutpaste.scoring.gaussian import GaussianDensity
from cutpaste.scoring.registry import load_scorer
from pipelines import descriptions, faults, figures, tracking
from pipelines.benchmark_config import TAG_MODEL_URI, TAG_VALIDATION_DIGEST, BenchmarkConfig, Session
from pipelines.benchmark_retries import with_tracking_retries
from pipelines.pyfunc_model import TAG_SHA256, log_detector_model
from pipelines.registry import choose_champions
from pipelines.train_run import HEATMAPS_NAME, RunSpec

_DRIVER_START = time.monotonic()  # the driver's wall time, for driver.json


def log_finished_run(
    client: MlflowClient,
    spec: RunSpec,
    run_id: str,
    files: Path,
    bench: BenchmarkConfig,
    phases: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Logs a finished run's metrics, artifacts and model, marks it finished, and returns its record."""
    evaluation = json.loads((files / "evaluation.json").read_text())
    # The bundle came back through checkpoint storage: checked against its digest record, read as data.
    verify_bundle(files / BUNDLE_NAME)
    bundle = load_weights(files / BUNDLE_NAME, kind="bundle")
    density = load_scorer(bundle["density"])
    assert isinstance(density, GaussianDensity)  # a bundle's image-level density is always the Gaussian
    final = final_metrics(evaluation, bundle, density, phases)
    log = tracking.MetricBuffer(bench.mlflow_uri, run_id)
    log.log(final, step=int(bundle["meta"].get("steps", 0)))
    log.close()
    _log_run_artifacts(client, run_id, files, density)
    # The model goes last, then the run is marked finished: a FINISHED run always has complete artifacts.
    model_uri, digest = log_detector_model(files, run_id=run_id)
    tracking.set_tags(client, run_id, {TAG_MODEL_URI: model_uri, TAG_SHA256: digest, **scoring_tags(bundle)})
    tracking.finish_run(client, run_id)
    record = finished_record(spec, final)
    record["validation_digest"] = str((bundle["meta"].get("validation") or {}).get("digest", ""))
    samples = evaluation["samples"]
    record.update(
        mlflow_run_id=run_id,
        model_uri=model_uri,
        sha256=digest,
        threshold=final["threshold"],
        expected_fpr=final.get("expected_fpr"),
        scores=[x["score"] for x in samples],
        labels=[x["label"] for x in samples],
    )
    return record


def _log_run_artifacts(client: MlflowClient, run_id: str, files: Path, density: GaussianDensity) -> None:
    """The density (weights and summary), the run's result files and its review heatmaps."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        density_path = Path(tmp) / "density.pt"
        torch.save(density.state_dict(), density_path)
        client.log_artifact(run_id, str(density_path), "density")
    tracking.log_json_artifact(client, run_id, density.summary(), "density_summary.json", "density")
    for name in ("evaluation.json", "train_log.jsonl", "detector.json"):
        client.log_artifact(run_id, str(files / name), "results")
    if (files / HEATMAPS_NAME).is_file():
        client.log_artifact(run_id, str(files / HEATMAPS_NAME), "heatmaps")


def final_metrics(
    evaluation: dict[str, Any], bundle: dict[str, Any], density: GaussianDensity, phases: dict[str, float] | None
) -> dict[str, float]:
    """A finished run's metrics: test results, the threshold with its expected and realised FPR, validation,
    timings."""
    final = {
        "image_auroc": evaluation["image_auroc"],
        "aupr": evaluation["aupr"],
        "f1_max": evaluation["f1_max"],
        "threshold": bundle["threshold"],
        "accuracy_at_threshold": evaluation["accuracy_at_threshold"],
        **{f"auroc_{k}": v for k, v in evaluation["per_defect_auroc"].items()},
        **density.summary(),
    }
    if evaluation.get("aupro") is not None:
        final.update(pixel_auroc=evaluation["pixel_auroc"], aupro=evaluation["aupro"])
    final.update(_validation_metrics(bundle["meta"]))
    if evaluation.get("test_fpr") is not None:  # the rate the threshold gave on the test split's normal images
        final["test_fpr"] = evaluation["test_fpr"]
    # Where the run's time went, as the status board saw it (seconds queued, training, evaluating).
    final.update({f"seconds_{state}": value for state, value in (phases or {}).items()})
    return final


def _validation_metrics(meta: dict[str, Any]) -> dict[str, float]:
    """What the detector read on its validation anomalies: val_*, the encoder and scorer choices, the
    calibration's expected false-positive rate."""
    validation = meta.get("validation") or {}
    out = {k: v for k, v in validation.items() if k.startswith("val_")}
    encoder = meta.get("encoder_choice")
    if encoder:  # the trained encoder against its untrained twin, on the same validation anomalies
        out.update(
            encoder_trained_val_auroc=encoder["trained_val_auroc"],
            encoder_untrained_val_auroc=encoder["untrained_val_auroc"],
        )
    selection = meta.get("image_score_selection")
    if selection:  # image_score=auto: every candidate's validation AUROC on the training images
        out.update({f"auto_val_auroc_{name}": v for name, v in selection["val_auroc"].items()})
    calibration = meta.get("calibration")
    if calibration:  # the false-positive rate the threshold is expected to give, with its bootstrap interval
        out.update(
            expected_fpr=calibration["expected_fpr"],
            expected_fpr_low=calibration["fpr_low"],
            expected_fpr_high=calibration["fpr_high"],
        )
    return out


def scoring_tags(bundle: dict[str, Any]) -> dict[str, str]:
    """How the detector scores images, and for ``image_score=auto`` which candidate it chose."""
    scoring = bundle.get("scoring") or bundle["config"]  # what the score resolved to (auto's choice)
    tags = {"cutpaste.image_score": f"{scoring.get('image_score')} ({scoring.get('feature_density')})"}
    selection = bundle["meta"].get("image_score_selection")
    if selection:
        tags["cutpaste.auto_choice"] = selection["chosen"]
    encoder = bundle["meta"].get("encoder_choice")
    if encoder:  # untrained_fallback: which encoder shipped, trained or its random-weight twin
        tags["cutpaste.encoder"] = str(encoder["shipped"])
    digest = (bundle["meta"].get("validation") or {}).get("digest")
    if digest:  # which validation set val_auroc was read on: champions compare within one digest
        tags[TAG_VALIDATION_DIGEST] = str(digest)
    return tags


def finished_record(spec: RunSpec, metrics: dict[str, float]) -> dict[str, Any]:
    """The results-table record of a finished run from its final metrics (pixel ones where logged)."""
    return asdict(
        RunRecord(
            spec.category,
            spec.seed,
            "finished",
            image_auroc=metrics["image_auroc"],
            pixel_auroc=metrics.get("pixel_auroc"),
            aupro=metrics.get("aupro"),
            run_name=spec.name,
            val_auroc=metrics.get("val_auroc"),
            expected_fpr=metrics.get("expected_fpr"),
            test_fpr=metrics.get("test_fpr"),
        )
    )


def to_record(data: dict[str, Any]) -> RunRecord:
    return RunRecord(**{k: data.get(k) for k in RunRecord.__dataclass_fields__ if k in data})


def describe(session: Session, records: list[dict[str, Any]], *, state: str) -> None:
    """The parent's and the finished children's descriptions (the run pages are the report), rewritten on
    every call, so a resumed benchmark updates them. Never fails the benchmark."""
    try:
        finished = [to_record(r) for r in records if r["status"] == "finished"]
        note = descriptions.parent_note(
            benchmark_id=session.bench.benchmark_id,
            data=tracking.redact_uri(session.bench.data),
            train_config=session.train_config,
            seeds=session.bench.seeds,
            results_markdown=to_markdown(summarise(finished)) if finished else "",
            records=records,
            experiment_id=session.experiment_id,
            state=state,
        )
        tracking.set_tags(session.client, session.parent_id, {descriptions.NOTE_TAG: note})
        parent = descriptions.run_link(session.experiment_id, session.parent_id, session.bench.benchmark_id)
        for r in records:
            if r["status"] == "finished" and r.get("mlflow_run_id"):
                child = descriptions.child_note(
                    category=r["category"], seed=r["seed"], metrics=r, registered=_registered(r), parent_link=parent
                )
                tracking.set_tags(session.client, r["mlflow_run_id"], {descriptions.NOTE_TAG: child})
    except Exception:
        traceback.print_exc()  # a description is a convenience: the results are already safe


def _registered(r: dict[str, Any]) -> str | None:
    """Where a registered run's model is, as its page says it (None when it was not registered)."""
    return r.get("registered_version") and (
        f"registered as `models:/cutpaste-{r['category']}@champion` (version {r['registered_version']}, "
        f"SHA-256 `{r.get('sha256')}`)"
    )


def add_phases(records: list[dict[str, Any]], phases: dict[str, dict[str, float]]) -> None:
    """Puts where each run's time went into its record (the results files show it; runs skipped as
    finished earlier get nothing)."""
    for record in records:
        record["phases"] = phases.get(record.get("run_name"), {})


def write_and_log_results(session: Session, records: list[dict[str, Any]]) -> dict[str, Path]:
    """Writes the results files, then logs them under the parent run and ends it (failed if any run
    failed); returns the files."""
    bench, client, parent_id = session.bench, session.client, session.parent_id
    out = Path(bench.out)
    paths = write_results([to_record(r) for r in records], out)
    failed = sum(r["status"] != "finished" for r in records)
    _write_driver_report(out, records)

    def log_results() -> None:
        _log_parent(client, parent_id, records, paths, bench)
        describe(session, records, state=f"finished, {failed} of {len(records)} runs failed" if failed else "finished")
        tracking.finish_run(client, parent_id, failed=bool(failed))

    try:
        with_tracking_retries(bench, "logging the results", log_results)
    except Exception as exc:
        # Tracking is down for good: everything trained is on disk; say where, and how to finish the logging.
        raise tracking.TrackingError(
            f"MLflow at {tracking.redact_uri(bench.mlflow_uri)} failed ({faults.describe(exc)}); results are in "
            f"{out} and trained detectors in {bench.storage}; run the same --benchmark-id again once MLflow is back"
        ) from None
    return paths


def _write_driver_report(out: Path, records: list[dict[str, Any]]) -> None:
    """``driver.json``: where each run's time went and what the driver itself cost (bench/scale.py reads it)."""
    report = {
        "wall_s": time.monotonic() - _DRIVER_START,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux reports KiB
        "runs": len(records),
        "finished": sum(r["status"] == "finished" for r in records),
        "mlflow_runs": 1 + sum(bool(r.get("mlflow_run_id")) for r in records),
        "phases": {r["run_name"]: r.get("phases", {}) for r in records if r.get("run_name")},
    }
    atomic_write_text(json.dumps(report, indent=2), out / "driver.json")


def _log_parent(
    client: MlflowClient, parent_id: str, records: list[dict[str, Any]], paths: dict[str, Path], bench: BenchmarkConfig
) -> None:
    """The parent run's results: the table, the files, the mean and per-category AUROCs, figures, heatmaps."""
    rows = summarise([to_record(r) for r in records])
    table = {key: [getattr(row, key) for row in rows] for key in rows[0].__dataclass_fields__} if rows else {}
    if table:
        client.log_table(parent_id, data=table, artifact_file="results_table.json")
    for path in paths.values():
        client.log_artifact(parent_id, str(path), "results")
    summary = next((r for r in rows if r.category == "mean"), None)
    if summary and summary.image_auroc_mean is not None:
        tracking.MetricBuffer(bench.mlflow_uri, parent_id).log({"mean_image_auroc": summary.image_auroc_mean}, 0)
    for row in rows:
        if row.kind != "average" and row.image_auroc_mean is not None:
            client.log_metric(parent_id, f"image_auroc.{row.category}", row.image_auroc_mean)
    try:
        for name, figure in figures.benchmark_figures(client, records).items():
            client.log_figure(parent_id, figure, f"figures/{name}.png")
            figures.close(figure)
    except Exception:
        # Figures are a convenience: a plotting problem must not fail a finished benchmark.
        traceback.print_exc()
    _log_sample_heatmaps(client, parent_id, records)
    tracking.set_tags(client, parent_id, {"cutpaste.results": to_markdown(rows)[:4900]})


def _log_sample_heatmaps(client: MlflowClient, parent_id: str, records: list[dict[str, Any]]) -> None:
    """Each finished run's review figure, gathered under the parent's ``heatmaps/`` as ``<run>.png``, and per
    category the champion's (else the first seed's) as ``figures/review_<category>.png``."""
    shown = choose_champions(records)
    with tempfile.TemporaryDirectory(prefix="cutpaste-heatmaps-") as tmp:
        for r in records:
            if r["status"] != "finished":
                continue
            try:
                path = client.download_artifacts(r["mlflow_run_id"], f"heatmaps/{HEATMAPS_NAME}", tmp)
            except Exception:
                continue  # no maps for this run (or an older run): nothing to show
            named = Path(tmp) / f"{r['run_name']}.png"
            Path(path).replace(named)
            client.log_artifact(parent_id, str(named), "heatmaps")
            if shown.get(r["category"]) is r:
                review = Path(tmp) / f"review_{r['category']}.png"
                shutil.copyfile(named, review)
                client.log_artifact(parent_id, str(review), "figures")
