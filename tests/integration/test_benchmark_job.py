"""End to end: `ray job submit` of the benchmark against a Ray head, a moto S3 server holding the data, and
an MLflow server whose artifacts live in the same bucket. All started here, all on loopback."""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from pathlib import Path

import boto3
import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from cutpaste.data.synth import generate_dataset
from cutpaste.detector import Detector
from cutpaste.integrity import sha256_file
from cutpaste.scoring.gaussian import GaussianDensity
from cutpaste.scoring.selection import CANDIDATES
from cutpaste.storage import upload
from infra.local.s3 import moto_s3_server, s3_env
from infra.local.services import VENV_BIN, mlflow_server, ray_head, submit_job

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BUCKET = "cutpaste-e2e"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    data = work / "data"
    categories = generate_dataset(data, categories=2, size=64, seed=3, train_count=30, test_good=8)
    with moto_s3_server() as endpoint:
        env = s3_env(endpoint)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            upload(data, f"s3://{BUCKET}/mvtec", endpoint_url=endpoint)
            with (
                mlflow_server(work, env=env, artifacts=f"s3://{BUCKET}/mlartifacts") as mlflow_uri,
                ray_head(work, env=env) as head,
            ):
                yield {
                    "work": work,
                    "data": data,
                    "categories": categories,
                    "endpoint": endpoint,
                    "mlflow": mlflow_uri,
                    "head": head,
                }
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _submit(stack) -> tuple[str, str]:
    config = stack["work"] / "config.json"
    # image_score=auto: each run chooses its scoring on its training images, and the run shows the choice.
    config.write_text(json.dumps({"preset": "ci", "steps": 30, "checkpoint_every": 10, "image_score": "auto"}))
    entrypoint = [
        str(VENV_BIN / "python"),
        "pipelines/full_benchmark.py",
        "--data",
        f"s3://{BUCKET}/mvtec",
        "--categories",
        *stack["categories"],
        "--config",
        str(config),
        "--benchmark-id",
        "e2e",
        "--mlflow-uri",
        stack["mlflow"],
        "--out",
        str(stack["work"] / "out"),
        "--storage",
        str(stack["work"] / "ray_storage"),
        "--s3-endpoint",
        stack["endpoint"],
    ]
    return submit_job(stack["head"], entrypoint, working_dir=REPO, timeout_s=900)


def test_benchmark_job_end_to_end(stack):
    status, logs = _submit(stack)
    assert status == "SUCCEEDED", logs[-6000:]
    categories = stack["categories"]
    client = MlflowClient(stack["mlflow"])
    experiment = client.get_experiment_by_name("cutpaste-benchmark")
    runs = client.search_runs([experiment.experiment_id], "tags.`cutpaste.benchmark_id` = 'e2e'")
    parents = [r for r in runs if r.data.tags.get("cutpaste.role") == "benchmark"]
    children = [r for r in runs if r.data.tags.get("cutpaste.role") == "run"]
    assert len(parents) == 1 and len(children) == len(categories)
    parent = parents[0]
    assert parent.info.status == "FINISHED" and "mean_image_auroc" in parent.data.metrics
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id, "results")}
    assert {"results/results.md", "results/results.csv", "results/results.parquet"} <= parent_files
    assert any(a.path == "figures" for a in client.list_artifacts(parent.info.run_id))
    # Sample heatmaps of every run are gathered on the parent (GradCAM maps: the synthetic data has masks).
    heatmaps = {a.path for a in client.list_artifacts(parent.info.run_id, "heatmaps")}
    assert heatmaps == {f"heatmaps/{child.data.tags['mlflow.runName']}.png" for child in children}
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert 0.0 <= child.data.metrics["image_auroc"] <= 1.0
        chosen = child.data.tags["cutpaste.auto_choice"]
        candidates = {k.removeprefix("auto_val_auroc_"): v for k, v in child.data.metrics.items() if "auto_val" in k}
        assert candidates[chosen] == max(candidates.values()) and set(candidates) == {c.name for c in CANDIDATES}
        assert child.data.params["steps"] == "30" and child.data.params["augment.area_ratio"] == "(0.02, 0.15)"
        assert len(client.get_metric_history(child.info.run_id, "loss")) >= 2
        density_file = client.download_artifacts(child.info.run_id, "density/density.pt", str(stack["work"]))
        density = GaussianDensity.from_state_dict(torch.load(density_file, weights_only=True))
        assert density.dim == 512 and 0 < density.shrinkage < 1
        assert "gde_shrinkage" in child.data.metrics
        assert 0.0 <= child.data.metrics["pixel_auroc"] <= 1.0 and 0.0 <= child.data.metrics["aupro"] <= 1.0

    _check_the_run_pages_tell_the_story(stack, parent.info.run_id, [c.info.run_id for c in children])
    _check_the_realised_false_positive_rates(client, parent, children, stack["work"])

    # The registered champion scores an image exactly as the library does.
    category = categories[0]
    image_path = next((stack["data"] / category / "test" / "good").iterdir())
    image = np.asarray(Image.open(image_path).convert("RGB"))
    mlflow.set_tracking_uri(stack["mlflow"])
    (stack["work"] / "served").mkdir()
    (stack["work"] / "dl").mkdir()  # MLflow's default download place is a new /tmp dir it never removes
    served = mlflow.pyfunc.load_model(f"models:/cutpaste-{category}@champion", dst_path=str(stack["work"] / "served"))
    prediction = served.predict(image[None])
    model_dir = Path(
        mlflow.artifacts.download_artifacts(f"models:/cutpaste-{category}@champion", dst_path=str(stack["work"] / "dl"))
    )
    bundle = next(model_dir.rglob("detector.pt"))
    detector = Detector.load(bundle)
    # The registry version carries the digest its loaders insist on: the bundle's own.
    version = MlflowClient(stack["mlflow"]).get_model_version_by_alias(f"cutpaste-{category}", "champion")
    assert version.tags["cutpaste.sha256"] == sha256_file(bundle)
    expected = detector.score(torch.from_numpy(image).permute(2, 0, 1)[None]).item()
    assert prediction["score"].iloc[0] == pytest.approx(expected, rel=1e-6)
    assert bool(prediction["anomalous"].iloc[0]) == (expected >= detector.threshold)
    with_maps = served.predict(image[None], params={"maps": True})
    size = detector.config.image_size
    assert np.asarray(with_maps["map"].iloc[0]).shape == (size, size)
    assert with_maps["score"].iloc[0] == pytest.approx(expected, rel=1e-6)

    # The same benchmark id again trains nothing.
    status, logs = _submit(stack)
    assert status == "SUCCEEDED", logs[-6000:]
    assert logs.count("skipped finished earlier") == len(categories)
    assert "training step" not in logs


def _rest(stack, endpoint: str, **query) -> dict:
    url = f"{stack['mlflow']}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _check_the_realised_false_positive_rates(client: MlflowClient, parent, children, work: Path) -> None:
    """Each child run logs ``test_fpr``, the share of its test split's good images at or above its threshold
    (recounted here from its evaluation.json), beside ``expected_fpr``; the results table carries both."""
    import pyarrow.parquet as pq

    table = client.download_artifacts(parent.info.run_id, "results/results_runs.parquet", str(work))
    by_name = {r["run_name"]: r for r in pq.read_table(table).to_pylist()}
    for child in children:
        folder = work / f"evaluation-{child.info.run_id}"
        folder.mkdir()
        evaluation = json.loads(
            Path(client.download_artifacts(child.info.run_id, "results/evaluation.json", str(folder))).read_text()
        )
        normal = [s["score"] for s in evaluation["samples"] if s["label"] == 0]
        realised = sum(score >= evaluation["threshold"] for score in normal) / len(normal)
        metrics, row = child.data.metrics, by_name[child.data.tags["mlflow.runName"]]
        assert metrics["test_fpr"] == pytest.approx(realised) and row["test_fpr"] == pytest.approx(realised)
        assert evaluation["test_fpr_normals"] == len(normal) == 8
        assert row["expected_fpr"] == pytest.approx(metrics["expected_fpr"])
        assert metrics["expected_fpr_low"] <= metrics["expected_fpr"] <= metrics["expected_fpr_high"]


def _check_the_run_pages_tell_the_story(stack, parent_id: str, child_ids: list[str]) -> None:
    """What the MLflow UI shows, read back through the REST API it reads: the experiment opens as a training
    experiment, the parent's description holds the results table, champions and links, each child's
    describes the run, datasets with digests and counts are logged, the figures exist."""
    experiment = _rest(stack, "experiments/get-by-name", experiment_name="cutpaste-benchmark")["experiment"]
    tags = {t["key"]: t["value"] for t in experiment.get("tags", [])}
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    parent = _rest(stack, "runs/get", run_id=parent_id)["run"]
    note = {t["key"]: t["value"] for t in parent["data"]["tags"]}["mlflow.note.content"]
    assert "# CutPaste benchmark `e2e` (finished)" in note and "| category | kind | seeds | image AUROC |" in note
    assert "models:/cutpaste-" in note and "@champion" in note
    assert all(
        f"runs/{child_id}?workflowType=machine_learning)" in note for child_id in child_ids
    )  # a link to every run
    figures = {a["path"] for a in _rest(stack, "artifacts/list", run_id=parent_id, path="figures")["files"]}
    categories = stack["categories"]
    assert {"figures/image_auroc.png", *(f"figures/review_{c}.png" for c in categories)} <= figures
    for child_id in child_ids:
        child = _rest(stack, "runs/get", run_id=child_id)["run"]
        child_note = {t["key"]: t["value"] for t in child["data"]["tags"]}["mlflow.note.content"]
        assert "image AUROC (test)" in child_note and "threshold" in child_note and f"runs/{parent_id}?" in child_note
        inputs = child["inputs"]["dataset_inputs"]
        contexts = {{t["key"]: t["value"] for t in d["tags"]}["mlflow.data.context"]: d["dataset"] for d in inputs}
        assert set(contexts) == {"training", "evaluation"}
        for dataset in contexts.values():
            assert dataset["digest"] and dataset["source"].startswith("{") and "s3://" in dataset["source"]
        counts = {t["key"]: t["value"] for d in inputs for t in d["tags"] if t["key"] == "images"}
        assert int(counts["images"]) > 0
