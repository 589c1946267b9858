"""What a sweep reports per category: the best trials as a table, the chosen config on the console, in the
sweep's parent MLflow run and (``--export``) as a ``--config`` file for the benchmark."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cutpaste.atomic import atomic_write_text
from pipelines import tracking


def _export_path(export: str, category: str, several: bool) -> Path:
    path = Path(export)
    return path.with_name(f"{path.stem}-{category}{path.suffix or '.json'}") if several else path


def _best_trials_table(rows: list[dict[str, Any]], metric: str, top: int = 5) -> str:
    keys = ("trial_id", "variant", "learning_rate", "steps", "ensemble_size", "ensemble_rule", "iterations")
    lines = [f"| rank | {' | '.join(keys)} | {metric} | outcome |", "|" + "---|" * (len(keys) + 3)]
    for rank, row in enumerate(rows[:top], 1):
        cells = [_fmt(row.get(k)) for k in keys]
        lines.append(f"| {rank} | {' | '.join(cells)} | {_fmt(row.get(metric))} | {row['outcome']} |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def report_category(
    client: Any, parent_id: str, outcome: dict[str, Any], args: argparse.Namespace, several: bool
) -> None:
    """One category's outcome: its best trials and its choice on the console, in the sweep's MLflow run, and
    (``--export``) as a config file to give the benchmark."""
    category, best, metric = outcome["category"], outcome["best"], args.metric
    print(f"\nbest trials of {category} ({outcome['num_trials']} trials, ranked on validation {metric}):")
    print(_best_trials_table(outcome["ranked"], metric))
    summary = {
        "category": category,
        "trial_id": best["trial_id"],
        f"validation_{metric}": best[metric],
        "ensemble_size": outcome["ensemble_size"],
        "ensemble_rule": outcome["ensemble_rule"],
        "config_difference": outcome["difference"],
        "test": outcome.get("test"),
    }
    line = f"chosen for {category}: trial {best['trial_id']}, validation {metric} {best[metric]:.4f}"
    if outcome.get("test"):
        line += f"; test split (evaluated once, after the sweep): image AUROC {outcome['test']['test_image_auroc']:.4f}"
    print(line)
    client.log_metric(parent_id, f"best.{metric}.{category}", float(best[metric]))
    if outcome.get("test"):
        client.log_metric(parent_id, f"test_image_auroc.{category}", outcome["test"]["test_image_auroc"])
    tracking.log_json_artifact(client, parent_id, outcome["difference"], f"best-{category}.json", "best_config")
    tracking.log_json_artifact(client, parent_id, summary, f"summary-{category}.json", "best_config")
    if args.export:
        path = _export_path(args.export, category, several)
        atomic_write_text(json.dumps(outcome["difference"], indent=2) + "\n", path)
        atomic_write_text(json.dumps(summary, indent=2, default=str) + "\n", path.with_suffix(".summary.json"))
        ensemble = f" --seeds {outcome['ensemble_size']} --ensemble {outcome['ensemble_size']}"
        ensemble += f" --ensemble-rule {outcome['ensemble_rule']}"
        print(
            f"exported {path}; run it through the benchmark: python pipelines/full_benchmark.py --data {args.data} "
            f"--categories {category} --config {path}{ensemble if outcome['ensemble_size'] > 1 else ''}"
        )
