"""Batch scoring end to end: `ray job submit` of pipelines/batch_score.py against a local Ray head, scoring an
``s3://`` prefix on moto with planted bad objects, with a registered champion (digest pinned by its tag).
The Parquet rows, the MLflow run, and a second submit that scores only what was added are checked."""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from cutpaste.data.images import load_image
from cutpaste.detector import Detector
from infra.local.s3 import moto_s3_server, s3_env
from infra.local.services import VENV_BIN, ray_head, submit_job
from tests.registered_model import register_champion, tiny_detector

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
BUCKET = "cutpaste-batch-score"
NAME = "cutpaste-batchtest"
SIZE = 32
BAD = {"incoming/empty.png": b"", "incoming/notes.txt": b"not pixels", "incoming/cut.png": None}


def _png(seed: int, width: int = SIZE, low: int = 100, high: int = 140) -> bytes:
    pixels = np.random.default_rng(seed).integers(low, high, (SIZE, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _good(first: int, count: int) -> dict[str, bytes]:
    """Half plain (like the normals), half noisy; every third wider than the detector's size."""
    return {
        f"incoming/{i:02d}.png": _png(i, SIZE + 8 * (i % 3 == 0), *((100, 140) if i % 2 else (0, 255)))
        for i in range(first, first + count)
    }


def _register(work: Path) -> tuple[str, Detector, str]:
    detector = tiny_detector(SIZE, threshold=0.0, category="batchtest")
    # The median of the first submission's scores: some images anomalous (with maps), some not.
    detector.threshold = float(np.median(list(_expected_scores(work, detector, _good(0, 6)).values())))
    uri, digest = register_champion(work, detector, NAME)
    return uri, detector, digest


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("batch")
    uri, detector, digest = _register(work)
    with moto_s3_server() as endpoint:
        env = s3_env(endpoint)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_keys(env))
        s3.create_bucket(Bucket=BUCKET)
        with ray_head(work, env=env) as head:
            yield {"work": work, "uri": uri, "detector": detector, "digest": digest, "s3": s3, "head": head}


def _keys(env: dict[str, str]) -> dict[str, str]:
    return {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"]}


def _put(stack, objects: dict[str, bytes | None]) -> None:
    for key, data in objects.items():
        body = data if data is not None else _png(99)[:120]  # None: a truncated PNG
        stack["s3"].put_object(Bucket=BUCKET, Key=key, Body=body)


def _submit(stack, name: str) -> dict:
    summary = stack["work"] / f"{name}.json"
    entrypoint = [str(VENV_BIN / "python"), "pipelines/batch_score.py", "--model", f"models:/{NAME}@champion"]
    entrypoint += ["--input", f"s3://{BUCKET}/incoming/", "--output", f"s3://{BUCKET}/scores/job/"]
    entrypoint += ["--mlflow-uri", stack["uri"], "--actors", "1", "--batch-size", "4", "--maps"]
    entrypoint += ["--summary-json", str(summary)]
    status, logs = submit_job(stack["head"], entrypoint, working_dir=REPO, timeout_s=300)
    assert status == "SUCCEEDED", logs[-6000:]
    return json.loads(summary.read_text())


def _rows(stack) -> list[dict]:
    listing = stack["s3"].list_objects_v2(Bucket=BUCKET, Prefix="scores/job/scores/")
    rows = []
    for item in listing.get("Contents", []):
        if not item["Key"].endswith(".parquet"):  # Arrow's directory marker
            continue
        body = stack["s3"].get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
        rows += pq.read_table(io.BytesIO(body)).to_pylist()
    return rows


def _expected_scores(work: Path, detector: Detector, objects: dict[str, bytes]) -> dict[str, float]:
    """What `cutpaste predict` with this bundle gives for the same files."""
    folder = work / "local"
    folder.mkdir(exist_ok=True)
    for key, data in objects.items():
        (folder / Path(key).name).write_bytes(data)
    images = torch.stack([load_image(folder / Path(key).name, SIZE) for key in objects])
    return dict(zip(objects, detector.score(images).tolist(), strict=True))


def test_batch_score_job_scores_the_prefix_then_resumes(stack):
    good = _good(0, 6)
    _put(stack, {**good, **BAD})
    first = _submit(stack, "first")
    rows = {r["path"]: r for r in _rows(stack)}
    assert set(rows) == {f"s3://{BUCKET}/{key}" for key in {**good, **BAD}}
    expected = _expected_scores(stack["work"], stack["detector"], good)
    for key, score in expected.items():
        row = rows[f"s3://{BUCKET}/{key}"]
        # float32 convolutions round differently for different batch compositions: ~1e-7 of the score
        assert row["score"] == pytest.approx(score, rel=1e-5, abs=1e-5), key
        assert row["verdict"] == ("anomalous" if score >= row["threshold"] else "normal")
        assert row["resized"] == key.endswith(("00.png", "03.png"))
        assert (row["map_path"] is not None) == row["anomalous"]
        assert (row["model_name"], row["model_version"], row["model_sha256"]) == (NAME, "1", stack["digest"])
    for key in BAD:
        row = rows[f"s3://{BUCKET}/{key}"]
        assert row["verdict"] == "error" and row["score"] is None and f"s3://{BUCKET}/{key}" in row["error"]
    assert first["images_scored"] == 9 and first["errors"] == 3 and first["images_skipped"] == 0
    assert 0 < first["anomalous"] < 6

    client = MlflowClient(stack["uri"])
    run = client.get_run(first["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["cutpaste.model_name"] == NAME and run.data.tags["cutpaste.model_version"] == "1"
    assert run.data.metrics["images_scored"] == 9 and run.data.metrics["errors"] == 3
    assert run.data.metrics["anomaly_rate"] == pytest.approx(first["anomalous"] / 6)
    artifacts = {a.path for folder in ("figures", "samples") for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"figures/score_distribution.png", "samples/top_scored.png"} <= artifacts

    _put(stack, _good(6, 2))
    second = _submit(stack, "second")
    assert second["images_scored"] == 2 and second["images_skipped"] == 9
    paths = [r["path"] for r in _rows(stack)]
    assert len(paths) == len(set(paths)) == 11
