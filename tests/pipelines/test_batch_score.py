"""Batch scoring's driver-side pieces without Ray: the resume index (half-written files ignored), the decode
step's skipping and counting, the per-run summary, where runs are tracked, and model resolution's refusals."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cutpaste.errors import ModelBundleError
from cutpaste.serving.batch_scoring import OUTPUT_SCHEMA, SCORES_DIR, content_digest
from pipelines import batch_model, batch_score


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _rows(paths: list[str], run: str, scores: list[float | None]) -> pa.Table:
    n = len(paths)
    return pa.Table.from_pydict(
        {
            "path": paths,
            "sha256": [content_digest(_png(i)) for i in range(n)],
            "size_bytes": [1] * n,
            "width": [16] * n,
            "height": [16] * n,
            "resized": [False] * n,
            "score": scores,
            "threshold": [1.0] * n,
            "verdict": ["error" if s is None else "anomalous" if s >= 1 else "normal" for s in scores],
            "anomalous": [None if s is None else s >= 1 for s in scores],
            "error": [f"cannot decode image {p}" if s is None else None for p, s in zip(paths, scores, strict=True)],
            "map_path": [None] * n,
            "model_name": ["m"] * n,
            "model_version": ["1"] * n,
            "model_sha256": ["x"] * n,
            "run": [run] * n,
            "scored_at": [None] * n,
        },
        schema=OUTPUT_SCHEMA,
    )


class FakeTally:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.add = self

    def remote(self, **counts: int) -> None:
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + value


@pytest.fixture
def output(tmp_path: Path) -> batch_score.Location:
    scores = tmp_path / "out" / SCORES_DIR
    scores.mkdir(parents=True)
    pq.write_table(_rows(["/in/0.png", "/in/1.png"], "r1", [0.5, None]), scores / "a.parquet")
    (scores / "b.parquet").write_bytes(b"PAR1 half written")  # a killed job's file
    return batch_score.Location(str(tmp_path / "out"))


def test_resume_index_reads_the_scored_rows_and_ignores_a_half_written_file(output, tmp_path: Path):
    done = batch_score.read_done(output.fs, output.child(SCORES_DIR))
    assert len(done) == 2
    assert batch_score.read_done(output.fs, str(tmp_path / "nothing")) == frozenset()


def test_the_decode_step_skips_what_was_scored_and_counts_it(output, tmp_path: Path):
    source = batch_score.Location(str(tmp_path / "in"))
    batch = {"path": np.array(["/in/0.png", "/in/1.png", "/in/2.png"], dtype=object)}
    batch["bytes"] = np.array([_png(0), _png(1), _png(2)], dtype=object)
    tally = FakeTally()
    batch_score._DONE_CACHE.clear()
    columns = batch_score.decode_step(batch, out=output, source=source, size=16, run="r2", tally=tally)
    assert list(columns["path"]) == ["/in/2.png"] and tally.counts == {"seen": 3, "skipped": 2}


def test_the_summary_reads_this_runs_rows_only(output):
    pq.write_table(
        _rows(["/in/5.png", "/in/6.png", "/in/7.png"], "r2", [2.0, 0.1, None]), output.path + "/scores/c.parquet"
    )
    summary = batch_score.summarize(output, "r2")
    assert summary.metrics()["images_scored"] == 3 and summary.metrics()["anomaly_rate"] == 0.5
    assert summary.highest() == [(2.0, "/in/5.png"), (0.1, "/in/6.png")]


def test_locations_keep_s3_paths_as_users_wrote_them():
    location = batch_score.Location("s3://bucket/incoming/", "http://127.0.0.1:9")
    assert location.path == "bucket/incoming" and location.uri("bucket/incoming/a.png") == "s3://bucket/incoming/a.png"


def test_a_registry_model_is_tracked_by_default_and_a_local_bundle_only_when_asked(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = argparse.Namespace(mlflow_uri=None, model="models:/cutpaste-bottle@champion")
    assert batch_score.tracking_uri(args).startswith("sqlite:///")
    assert batch_score.tracking_uri(argparse.Namespace(mlflow_uri=None, model="runs/bundle")) is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert batch_score.tracking_uri(argparse.Namespace(mlflow_uri=None, model="b")) == "http://127.0.0.1:5000"


def test_model_specs_that_name_nothing_are_refused_by_name(tmp_path: Path):
    with pytest.raises(ModelBundleError, match="models:/<name>@<alias>"):
        batch_model.resolve_model("models:/a/b/c", None)
    with pytest.raises(ModelBundleError, match="not a models:/ URI and not a bundle directory"):
        batch_model.resolve_model(str(tmp_path / "missing"), None)
    with pytest.raises(ModelBundleError, match="not in the registry"):
        batch_model.resolve_model("models:/nobody@champion", f"sqlite:///{tmp_path / 'mlflow.db'}")
