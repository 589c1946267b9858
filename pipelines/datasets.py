"""Datasets in MLflow: each run logs the training and test files it saw (``mlflow.log_input``), so the UI's
Datasets panel shows source, digest and counts, and a changed file shows up as a new digest."""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

import mlflow
import pandas as pd

from cutpaste.storage.inventory import category_inventory

CONTEXTS = {"train": "training", "test": "evaluation"}


def dataset_inputs(data: str, category: str, *, endpoint_url: str | None = None) -> list[tuple[Any, str, dict]]:
    """``(dataset, context, tags)`` per split: a table of the split's files with their fingerprints."""
    table = pd.DataFrame(category_inventory(data, category, endpoint_url=endpoint_url))
    inputs = []
    for split, context in CONTEXTS.items():
        part = table[table["split"] == split].reset_index(drop=True)
        source = f"{str(data).rstrip('/')}/{category}/{split}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLflow warns that a local source is not an artifact location
            dataset = mlflow.data.from_pandas(part, source=source, name=f"{category}-{split}")
        counts = Counter(part["defect_type"])
        tags = {"images": str(len(part)), **{f"defect_type.{k}": str(v) for k, v in sorted(counts.items())}}
        inputs.append((dataset, context, tags))
    return inputs


def log_datasets(client: Any, run_id: str, inputs: list[tuple[Any, str, dict]]) -> None:
    """Logs prepared inputs into ``run_id`` through the client: no active run is started, so a run being
    queued or trained keeps its status."""
    from mlflow.tracking.fluent import _create_dataset_input

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's schema inference hints about integer columns
        entries = [_create_dataset_input(d, context, tags) for d, context, tags in inputs]
    client.log_inputs(run_id, datasets=entries)
