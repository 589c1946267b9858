"""MLflow bookkeeping against a real local sqlite store (no server needed for these)."""

import pytest
from mlflow import MlflowClient

from pipelines import tracking


@pytest.fixture
def client(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, MlflowClient(uri), tracking.ensure_experiment(MlflowClient(uri), "t", tmp_path / "artifacts")


def test_find_or_create_reuses_runs_by_tags(client):
    _uri, mlflow_client, experiment = client
    parent, created = tracking.find_or_create_run(mlflow_client, experiment, name="b", tags={"k": "b1"})
    again, created_again = tracking.find_or_create_run(mlflow_client, experiment, name="b", tags={"k": "b1"})
    assert created and not created_again and again == parent
    child, _ = tracking.find_or_create_run(mlflow_client, experiment, name="c", tags={"k": "c1"}, parent_run_id=parent)
    assert mlflow_client.get_run(child).data.tags["mlflow.parentRunId"] == parent


def test_params_are_logged_once_and_resume_safely(client):
    _uri, mlflow_client, experiment = client
    run, _ = tracking.find_or_create_run(mlflow_client, experiment, name="r", tags={"k": "r"})
    params = {f"p{i}": i for i in range(150)}
    tracking.log_params(mlflow_client, run, params)
    tracking.log_params(mlflow_client, run, params)  # a resumed benchmark logs the same params again
    assert len(mlflow_client.get_run(run).data.params) == 150


def test_metric_buffer_keeps_metrics_through_an_outage(client):
    uri, mlflow_client, experiment = client
    run, _ = tracking.find_or_create_run(mlflow_client, experiment, name="r", tags={"k": "r"})
    buffer = tracking.MetricBuffer(uri, run)
    real = buffer.client
    calls = {"n": 0}

    class Down:
        def log_batch(self, *args, **kwargs):
            calls["n"] += 1
            raise ConnectionError("tracking server down")

    buffer.client = Down()
    for step in range(5):
        buffer.log({"loss": 1.0 / (step + 1)}, step)
    assert len(buffer.pending) == 5 and calls["n"] == 5 and "down" in buffer.last_error
    with pytest.raises(tracking.TrackingError, match="could not write 5 metrics"):
        buffer.close(attempts=2, backoff_s=0.01)
    buffer.client = real  # the server is back
    buffer.close()
    history = mlflow_client.get_metric_history(run, "loss")
    assert [m.step for m in history] == [0, 1, 2, 3, 4]


def test_unreachable_server_fails_fast():
    with pytest.raises(tracking.TrackingError, match="unreachable"):
        tracking.check_reachable("http://127.0.0.1:9", timeout_s=2)
    tracking.check_reachable("sqlite:///anything.db")  # local stores need no check
