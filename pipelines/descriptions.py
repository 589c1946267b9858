"""Run descriptions (MLflow's ``mlflow.note.content``, Markdown): the run page is the report, so a reviewer
reads how a benchmark went, and what one run is, without opening a file."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cutpaste.config import TrainConfig

NOTE_TAG = "mlflow.note.content"
MAX_NOTE_CHARS = 60_000  # well inside what the tag column holds on sqlite and PostgreSQL stores
UNREGISTERED = (
    "logged with this run (the `model` artifact); each category's champion is registered once all its seeds finish"
)


# The UI of MLflow 3.17 decides GenAI vs model-training pages from this parameter (else from a setting
# stored in the browser, GenAI by default) rather than from the experiment's kind tag: links keep it.
TRAINING_VIEW = "workflowType=machine_learning"


def run_link(experiment_id: str, run_id: str, text: str) -> str:
    """A link the MLflow UI resolves from any run page of the same server."""
    return f"[{text}](#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW})"


def experiment_url(base: str, experiment_id: str) -> str:
    """Where the UI shows an experiment's runs table."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}?{TRAINING_VIEW}"


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def parent_note(
    *,
    benchmark_id: str,
    data: str,
    train_config: TrainConfig,
    seeds: int,
    results_markdown: str,
    records: Sequence[dict[str, Any]],
    experiment_id: str,
    state: str,
) -> str:
    """The benchmark's page: what ran, on what, the results table (paper columns, mean +- std over seeds),
    the champion per category and a link to every run."""
    c = train_config
    lines = [
        f"# CutPaste benchmark `{benchmark_id}` ({state})",
        "",
        f"- **data**: `{data}`",
        f"- **preset**: `{c.preset}`: {c.steps} steps of {c.batch_size} images at {c.image_size} px, "
        f"variant `{c.variant}`, image score `{c.image_score}`, seeds {c.seed}..{c.seed + seeds - 1}",
        "",
        "## Results (test split; mean ± std over seeds, next to the paper)",
        "",
        results_markdown or "_no run has finished yet_",
        "",
        "## Champions (best validation AUROC per category; the test split never chooses)",
        "",
    ]
    champions = [r for r in records if r.get("registered_version")]
    if champions:
        lines += ["| category | run | val AUROC | test image AUROC | registered as |", "|---|---|---|---|---|"]
        for r in sorted(champions, key=lambda r: r["category"]):
            link = run_link(experiment_id, r["mlflow_run_id"], r["run_name"])
            where = f"`models:/cutpaste-{r['category']}@champion` (version {r['registered_version']})"
            lines.append(
                f"| {r['category']} | {link} | {_fmt(r.get('val_auroc'))} | {_fmt(r.get('image_auroc'))} | {where} |"
            )
    else:
        lines.append("_none registered yet_")
    lines += ["", "## Runs", "", "| run | status | image AUROC | pixel AUROC | AUPRO |", "|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["category"], r["seed"])):
        name = r.get("run_name") or f"{r['category']}-seed{r['seed']}"
        shown = run_link(experiment_id, r["mlflow_run_id"], name) if r.get("mlflow_run_id") else name
        status = r["status"] if len(r["status"]) < 80 else r["status"][:77] + "..."
        cells = (_fmt(r.get("image_auroc")), _fmt(r.get("pixel_auroc")), _fmt(r.get("aupro")))
        lines.append(f"| {shown} | {status} | {' | '.join(cells)} |")
    return "\n".join(lines)[:MAX_NOTE_CHARS]


def child_note(
    *,
    category: str,
    seed: int,
    metrics: dict[str, float],
    registered: str | None,
    parent_link: str,
) -> str:
    """One run's page: what it is, how it scored, its threshold and where its detector lives."""
    rows = [
        ("image AUROC (test)", metrics.get("image_auroc")),
        ("pixel AUROC (test)", metrics.get("pixel_auroc")),
        ("AUPRO (test)", metrics.get("aupro")),
        ("validation AUROC (held-out normals + synthetic anomalies)", metrics.get("val_auroc")),
        ("threshold (Mahalanobis distance)", metrics.get("threshold")),
        ("expected false-positive rate at the threshold", metrics.get("expected_fpr")),
        ("false-positive rate on the test split's normal images", metrics.get("test_fpr")),
    ]
    lines = [
        f"# `{category}`, seed {seed}",
        "",
        f"Part of {parent_link}.",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {name} | {_fmt(value, 4)} |" for name, value in rows if value is not None),
        "",
        f"**Detector**: {registered or UNREGISTERED}.",
    ]
    return "\n".join(lines)
