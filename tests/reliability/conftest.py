"""One stack for the fault tests: moto S3 with the data, an MLflow server that can be stopped and restarted on
its port, and a local Ray. Marker secrets sit in the environment the whole time, so every run here is also
a leak check (tests/reliability/test_secrets.py searches what was written).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.local import services
from infra.local.s3 import moto_s3_server, s3_env

REPO = Path(__file__).resolve().parents[2]
# Found anywhere in what a benchmark writes, each of these is a leak.
SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "MARKERsecretKEY7f3a",
    "AWS_SESSION_TOKEN": "MARKERsessionTOKEN9c1d",
    "MLFLOW_TRACKING_PASSWORD": "MARKERmlflowPW52e8",
}
URI_PASSWORD = "MARKERuriPW0b6c"


class MlflowServer(services.MlflowServer):
    @property
    def uri_with_password(self) -> str:
        """The same server, addressed with credentials inside the URI (the server ignores them)."""
        return f"http://bench-user:{URI_PASSWORD}@127.0.0.1:{self.port}"


@dataclass
class Stack:
    work: Path
    data: Path
    categories: list[str]
    endpoint: str
    bucket: str
    mlflow: MlflowServer
    ray_temp: Path

    @property
    def s3_data(self) -> str:
        return f"s3://{self.bucket}/mvtec"

    def config(self, name: str, **overrides) -> Path:
        """A tiny ``ci`` config: 64 px, a few steps, a checkpoint every few steps."""
        path = self.work / f"{name}.json"
        values = {"preset": "ci", "steps": 20, "checkpoint_every": 5, "log_every": 5, "batch_size": 4}
        path.write_text(json.dumps({**values, **overrides}))
        return path


@pytest.fixture(scope="package")
def stack(tmp_path_factory):
    import boto3
    import ray

    from cutpaste.data.synth import generate_dataset
    from cutpaste.storage import upload

    work = tmp_path_factory.mktemp("reliability")
    data = work / "data"
    categories = generate_dataset(data, categories=2, size=64, seed=5, train_count=10, test_good=3)
    # Ray's socket paths must stay short: its temp dir lives directly under /tmp.
    ray_temp = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))
    saved = dict(os.environ)
    with moto_s3_server() as endpoint:
        env = {**s3_env(endpoint), **SECRETS, "MLFLOW_TRACKING_USERNAME": "bench-user"}
        env["CUTPASTE_CACHE_DIR"] = str(work / "cache")
        # A dead tracking server must cost seconds, not MLflow's default minutes of retries per call.
        env.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="0")
        env.update(MLFLOW_HTTP_REQUEST_TIMEOUT="10", PYTHONPATH=str(REPO))
        os.environ.update(env)
        bucket = f"rel-{uuid.uuid4().hex[:8]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        upload(data, f"s3://{bucket}/mvtec", endpoint_url=endpoint)
        server = MlflowServer(work, env)
        try:
            server.start()
            ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(ray_temp))
            yield Stack(work, data, categories, endpoint, bucket, server, ray_temp)
        finally:
            ray.shutdown()
            server.close()
            os.environ.clear()
            os.environ.update(saved)
            shutil.rmtree(ray_temp, ignore_errors=True)
