"""infra/mlflow/local.sh: a real server on a free loopback port answers /health and takes a run with an
artifact through its proxy; then it is stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from infra.local.services import free_port, wait_http

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_local_server_answers_health_and_proxies_artifacts(tmp_path):
    port = free_port()
    env = {**os.environ, "MLFLOW_PORT": str(port), "MLFLOW_DIR": str(tmp_path / "server")}
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen(
            ["bash", str(REPO / "infra" / "mlflow" / "local.sh")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            uri = f"http://127.0.0.1:{port}"
            wait_http(f"{uri}/health", 90, process)
            client = MlflowClient(uri)
            run = client.create_run(client.create_experiment("infra-local"))
            note = tmp_path / "note.txt"
            note.write_text("proxied")
            client.log_artifact(run.info.run_id, str(note))
            # --serve-artifacts: the run's artifacts live behind the server, in its artifacts folder.
            assert client.get_run(run.info.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
            assert list((tmp_path / "server" / "mlartifacts").rglob("note.txt"))
            assert (tmp_path / "server" / "mlflow.db").is_file()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
    assert "MLflow on http://127.0.0.1" in (tmp_path / "server.log").read_text()
