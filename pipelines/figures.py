"""Figures for the benchmark's parent run: image AUROC per category next to the paper's, ROC curves and score
distributions per category."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from mlflow import MlflowClient
from sklearn.metrics import roc_curve

from cutpaste.evaluation.paper import PAPER_IMAGE_AUROC


def _evaluation(client: MlflowClient, record: dict[str, Any]) -> dict[str, Any] | None:
    if "scores" in record:
        return {"scores": record["scores"], "labels": record["labels"]}
    with tempfile.TemporaryDirectory(prefix="cutpaste-evaluation-") as tmp:
        try:
            path = client.download_artifacts(record["mlflow_run_id"], "results/evaluation.json", tmp)
        except Exception:
            return None
        samples = json.loads(Path(path).read_text())["samples"]
    return {"scores": [s["score"] for s in samples], "labels": [s["label"] for s in samples]}


def benchmark_figures(client: MlflowClient, records: list[dict[str, Any]]) -> dict[str, plt.Figure]:
    finished = [r for r in records if r["status"] == "finished"]
    categories = sorted({r["category"] for r in finished})
    if not categories:
        return {}
    cols = min(4, len(categories))
    rows = -(-len(categories) // cols)
    roc, roc_axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    dist, dist_axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for i, category in enumerate(categories):
        ax, hx = roc_axes[i // cols][i % cols], dist_axes[i // cols][i % cols]
        for r in sorted((r for r in finished if r["category"] == category), key=lambda r: r["seed"]):
            evaluation = _evaluation(client, r)
            if evaluation is None:
                continue
            fpr, tpr, _ = roc_curve(evaluation["labels"], evaluation["scores"])
            ax.plot(fpr, tpr, label=f"seed {r['seed']} ({100 * r['image_auroc']:.1f})")
            good = [s for s, y in zip(evaluation["scores"], evaluation["labels"], strict=True) if y == 0]
            bad = [s for s, y in zip(evaluation["scores"], evaluation["labels"], strict=True) if y == 1]
            if r["seed"] == min(x["seed"] for x in finished if x["category"] == category):
                hx.hist([good, bad], bins=20, label=["good", "defective"], color=["tab:green", "tab:red"])
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
        ax.set(title=category, xlabel="false positive rate", ylabel="true positive rate")
        ax.legend(fontsize=7, loc="lower right")
        hx.set(title=f"{category}: anomaly scores", xlabel="Mahalanobis distance")
        hx.legend(fontsize=7)
    for axes in (roc_axes, dist_axes):
        for j in range(len(categories), rows * cols):
            axes[j // cols][j % cols].axis("off")
    roc.tight_layout()
    dist.tight_layout()
    return {"image_auroc": auroc_bars(finished, categories), "roc_curves": roc, "score_distributions": dist}


def auroc_bars(finished: list[dict[str, Any]], categories: list[str]) -> plt.Figure:
    """Image AUROC per category (mean over seeds, each seed a dot) beside the paper's, where it has one."""
    figure, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(categories) + 2), 3.6))
    xs = range(len(categories))
    ours = [[100 * r["image_auroc"] for r in finished if r["category"] == c] for c in categories]
    ax.bar([x - 0.2 for x in xs], [sum(v) / len(v) for v in ours], width=0.4, label="this benchmark (mean)")
    for x, values in zip(xs, ours, strict=True):
        ax.scatter([x - 0.2] * len(values), values, color="black", s=8, zorder=3)
    paper = [PAPER_IMAGE_AUROC.get(c) for c in categories]
    ax.bar([x + 0.2 for x, p in zip(xs, paper, strict=True) if p], [p for p in paper if p], width=0.4, label="paper")
    low = min([min(v) for v in ours] + [p for p in paper if p])
    ax.set(ylabel="image AUROC (%)", ylim=(max(0.0, low - 10), 100.5), title="image AUROC per category (test split)")
    ax.set_xticks(list(xs), categories, rotation=30, ha="right")
    ax.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure


def close(figure: plt.Figure) -> None:
    plt.close(figure)
