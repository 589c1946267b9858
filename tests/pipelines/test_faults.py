"""Which failures a run is retried for (pipelines/faults.py), on the error shapes Ray Train hands back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from ray.exceptions import ActorDiedError, RayTaskError, WorkerCrashedError
from ray.train import ControllerError, WorkerGroupError
from ray.train.v2._internal.exceptions import UserExceptionWithTraceback, WorkerGroupStartupFailedError

from cutpaste.errors import ConfigError, CutPasteError, DataError
from cutpaste.storage.s3 import BucketNotFoundError, TransferError
from pipelines import faults
from pipelines.tracking import TrackingError


def _worker_error(exc: BaseException) -> WorkerGroupError:
    return WorkerGroupError("rank 0 failed", {0: UserExceptionWithTraceback(exc, "Traceback ...")})


@pytest.mark.parametrize(
    "error",
    [
        ControllerError(ActorDiedError()),  # a worker killed while the group starts (Ray does not retry this)
        ActorDiedError(),  # the train controller killed: fit() loses its actor
        _worker_error(ActorDiedError()),
        WorkerGroupError("lost", {0: WorkerCrashedError()}),
        ControllerError(WorkerGroupStartupFailedError("could not start")),
        _worker_error(TransferError("cannot read s3://b/k: connection to http://127.0.0.1:9 failed")),
        TrackingError("MLflow server http://127.0.0.1:5000 is unreachable"),
        ConnectionRefusedError(111, "Connection refused"),
        RuntimeError("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed: Max retries exceeded"),
    ],
)
def test_lost_processes_and_connections_are_retried(error):
    assert faults.is_infrastructure_fault(error)


@pytest.mark.parametrize(
    "error",
    [
        _worker_error(DataError("train/good/000.png is not a decodable image")),
        _worker_error(ConfigError("steps: must be >= 1")),
        _worker_error(BucketNotFoundError("bucket 'x' not found")),
        _worker_error(ValueError("shapes do not match")),
        # A worker failed on bad data and its group was torn down after: the data error decides.
        WorkerGroupError("two ranks", {0: UserExceptionWithTraceback(KeyError("label"), ""), 1: ActorDiedError()}),
        RayTaskError("f", "Traceback ...", TypeError("bad argument")),
        CutPasteError("a bundle from an incompatible version"),
        RuntimeError("a bug with no connection in it"),
    ],
)
def test_bad_data_config_and_bugs_are_not(error):
    assert not faults.is_infrastructure_fault(error)


def test_an_explicit_cause_is_followed_but_not_an_unrelated_context():
    try:
        try:
            {}["missing"]
        except KeyError:
            raise ConnectionResetError("connection reset by peer") from None
    except ConnectionResetError as exc:
        assert faults.is_infrastructure_fault(exc)
    wrapped = RuntimeError("logging failed")
    wrapped.__cause__ = DataError("evaluation.json is not JSON")
    assert not faults.is_infrastructure_fault(wrapped)
    assert faults.describe(wrapped) == "RuntimeError > DataError: evaluation.json is not JSON"


def test_fault_settings_are_checked_with_a_one_line_error():
    faults.check_fault_setting(None)
    faults.check_fault_setting("evaluation@b-cat-seed0:/tmp/marker")
    for bad in ("evaluate:/tmp/m", "training", "training:"):
        with pytest.raises(CutPasteError, match="CUTPASTE_FAULT="):
            faults.check_fault_setting(bad)


def test_inject_kills_once_at_its_point_and_run(tmp_path):
    marker = tmp_path / "marker"
    script = (
        "import sys; from pipelines import faults\n"
        "faults.inject('training', 'run-a')\n"  # another point: passes
        "faults.inject('evaluation', 'run-b')\n"  # another run: passes
        "print('reached', flush=True)\n"
        "faults.inject('evaluation', 'run-a')\n"
        "print('survived', flush=True)\n"
    )
    env = {**os.environ, faults.FAULT_ENV: f"evaluation@run-a:{marker}"}
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == -9 and first.stdout == "reached\n", first.stderr
    assert marker.read_text().startswith("evaluation run-a pid ")
    second = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0 and second.stdout == "reached\nsurvived\n"


def test_several_faults_each_fire_once(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    script = (
        "from pipelines import faults\nfaults.inject('density', 'r')\nfaults.inject('evaluation', 'r')\nprint('end')\n"
    )
    env = {**os.environ, faults.FAULT_ENV: f"density:{first},evaluation:{second}"}
    faults.check_fault_setting(env[faults.FAULT_ENV])
    codes = [subprocess.run([sys.executable, "-c", script], env=env, timeout=120).returncode for _ in range(3)]
    assert codes == [-9, -9, 0] and first.is_file() and second.is_file()


def test_descriptions_name_the_innermost_error_and_where_it_came_from():
    startup = ControllerError(ActorDiedError())
    assert faults.describe(startup).startswith("ControllerError > ActorDiedError: ")
    bad = _worker_error(DataError("train/good/000.png is not a decodable image"))
    assert faults.describe(bad) == "WorkerGroupError > DataError: train/good/000.png is not a decodable image"
    assert faults.describe(KeyError("x")) == "KeyError: 'x'"
