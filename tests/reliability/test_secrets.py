"""No credential reaches anything a benchmark writes: marker secrets in the environment and in the tracking
URI, a benchmark on S3 data, then every file written and every MLflow param and tag is searched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.full_benchmark import main
from tests.reliability.conftest import SECRETS, URI_PASSWORD

MARKERS = [*SECRETS.values(), URI_PASSWORD]


def _files_holding(root: Path, markers: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        hits = [m for m in markers if m.encode() in data]
        if hits:
            found[str(path)] = hits
    return found


@pytest.mark.integration
@pytest.mark.slow
def test_no_secret_reaches_files_logs_or_mlflow(stack, capsys):
    out = stack.work / "out-secrets"
    code = main(
        [
            "--data",
            stack.s3_data,
            "--s3-endpoint",
            stack.endpoint,
            "--config",
            str(stack.config("secrets")),
            "--benchmark-id",
            "secrets",
            "--mlflow-uri",
            stack.mlflow.uri_with_password,
            "--out",
            str(out),
            "--storage",
            str(stack.work / "ray_storage"),
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.out[-3000:] + printed.err[-3000:]
    assert (out / "results.md").is_file()
    for marker in MARKERS:
        assert marker not in printed.out and marker not in printed.err
    # Files: results, Ray checkpoint storage, the MLflow store and its artifacts, the server's log, the local
    # S3 cache, and Ray's session logs.
    leaks = {**_files_holding(stack.work, MARKERS), **_files_holding(stack.ray_temp, MARKERS)}
    assert leaks == {}
    client = MlflowClient(stack.mlflow.uri)
    experiment = client.get_experiment_by_name("cutpaste-benchmark")
    runs = client.search_runs([experiment.experiment_id], "tags.`cutpaste.benchmark_id` = 'secrets'")
    assert len(runs) == 1 + len(stack.categories)
    for run in runs:
        text = repr(run.data.params) + repr(run.data.tags)
        assert [m for m in MARKERS if m in text] == [], run.info.run_name
    parent = next(r for r in runs if r.data.tags.get("cutpaste.role") == "benchmark")
    assert parent.data.params["benchmark.mlflow_uri"] == stack.mlflow.uri  # logged, without its credentials


@pytest.mark.parametrize(
    "uri,shown",
    [
        ("http://u:pw@127.0.0.1:5000/x", "http://u:***@127.0.0.1:5000/x"),
        ("https://token@mlflow.example:443", "https://***@mlflow.example:443"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////tmp/m.db", "sqlite:////tmp/m.db"),
        ("s3://bucket/ckpt?endpoint_override=127.0.0.1:9000", "s3://bucket/ckpt?endpoint_override=127.0.0.1:9000"),
    ],
)
def test_redact_uri(uri, shown):
    from pipelines.tracking import redact_uri

    assert redact_uri(uri) == shown


def test_credentials_leave_the_uri_for_mlflows_variables(monkeypatch):
    from pipelines.tracking import credentials_to_env

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert credentials_to_env("http://al%40ce:p%3Aw@127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "al@ce" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "p:w"
    assert credentials_to_env("sqlite:///x.db") == "sqlite:///x.db"
