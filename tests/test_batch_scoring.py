"""Batch scoring's per-batch logic (cutpaste/serving/batch_scoring.py): bad objects become rows that name them,
wrong-size images are resized as at training and flagged, scores equal ``predict``'s, and resume skips
exactly what was scored before (same key, same content)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from cutpaste.data.images import load_image
from cutpaste.detector import Detector, embed_images
from cutpaste.model.network import build_model
from cutpaste.presets import preset
from cutpaste.scoring.gaussian import GaussianDensity
from cutpaste.serving.batch_scoring import (
    OUTPUT_SCHEMA,
    ModelInfo,
    ScoreSummary,
    content_digest,
    decode_batch,
    done_key,
    score_batch,
)

SIZE = 32
MODEL = ModelInfo("cutpaste-widget", "3", "ab" * 32)


def _png(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def detector() -> Detector:
    config = preset("ci").override({"image_size": SIZE})
    torch.manual_seed(0)
    model = build_model(config).eval()
    normals = torch.randint(100, 140, (12, 3, SIZE, SIZE), dtype=torch.uint8)
    density = GaussianDensity.fit(embed_images(model, normals, batch_size=8, size=SIZE))
    return Detector(model=model, density=density, threshold=1.0, config=config, category="widget")


BAD = {
    "s3://b/in/empty.png": b"",
    "s3://b/in/notes.txt": b"these are not pixels\n",
    "s3://b/in/corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    "s3://b/in/truncated.png": _png(SIZE, SIZE, 1)[:200],
}


def test_bad_objects_become_error_rows_that_name_them_and_good_ones_decode():
    good = {"s3://b/in/ok.png": _png(SIZE, SIZE, 2), "s3://b/in/big.png": _png(50, 40, 3)}
    objects = {**good, **BAD}
    columns, skipped = decode_batch(list(objects), list(objects.values()), SIZE)
    assert skipped == 0
    assert list(columns["path"]) == list(objects)
    assert columns["image"].shape == (len(objects), 3, SIZE, SIZE) and columns["image"].dtype == np.uint8
    rows = {p: i for i, p in enumerate(columns["path"])}
    for path in BAD:
        error = columns["error"][rows[path]]
        assert path in error, error
    assert "empty object" in columns["error"][rows["s3://b/in/empty.png"]]
    assert "truncated" in columns["error"][rows["s3://b/in/truncated.png"]]
    ok, big = rows["s3://b/in/ok.png"], rows["s3://b/in/big.png"]
    assert columns["error"][ok] == "" and columns["error"][big] == ""
    assert not columns["resized"][ok] and columns["resized"][big]
    assert (columns["width"][big], columns["height"][big]) == (50, 40)
    assert columns["sha256"][big] == content_digest(good["s3://b/in/big.png"])


def test_wrong_size_images_are_resized_as_training_and_predict_do(tmp_path: Path):
    data = _png(50, 40, 3)
    (tmp_path / "big.png").write_bytes(data)
    columns, _ = decode_batch(["big.png"], [data], SIZE)
    assert torch.equal(torch.from_numpy(columns["image"][0]), load_image(tmp_path / "big.png", SIZE))


def test_resume_skips_the_same_key_with_the_same_content_only():
    a, b = _png(SIZE, SIZE, 4), _png(SIZE, SIZE, 5)
    done = {done_key("s3://b/in/a.png", content_digest(a)), done_key("s3://b/in/b.png", content_digest(a))}
    columns, skipped = decode_batch(["s3://b/in/a.png", "s3://b/in/b.png"], [a, b], SIZE, done=done)
    # a.png is unchanged: skipped; b.png was replaced since (new content under the same key): scored again.
    assert skipped == 1 and list(columns["path"]) == ["s3://b/in/b.png"]
    columns, skipped = decode_batch(["s3://b/in/a.png"], [a], SIZE, done=done)
    assert skipped == 1 and columns["image"].shape == (0, 3, SIZE, SIZE)


def test_scores_equal_predict_and_error_rows_keep_their_place(detector: Detector, tmp_path: Path):
    objects = {f"s3://b/in/{i}.png": _png(SIZE + 8 * (i % 2), SIZE, 10 + i) for i in range(4)}
    objects["s3://b/in/notes.txt"] = b"not an image"
    for path, data in objects.items():
        (tmp_path / Path(path).name).write_bytes(data)
    columns, _ = decode_batch(list(objects), list(objects.values()), SIZE)
    table = score_batch(detector, columns, MODEL, run="r1")
    assert table.schema == OUTPUT_SCHEMA and table.num_rows == len(objects)
    rows = table.to_pylist()
    assert [r["path"] for r in rows] == list(objects)
    expected = detector.score(torch.stack([load_image(tmp_path / f"{i}.png", SIZE) for i in range(4)]))
    assert [r["score"] for r in rows[:4]] == pytest.approx(expected.tolist(), abs=1e-5)
    error = rows[4]
    assert error["verdict"] == "error" and error["score"] is None and error["anomalous"] is None
    assert "s3://b/in/notes.txt" in error["error"]
    assert {r["model_version"] for r in rows} == {"3"} and {r["run"] for r in rows} == {"r1"}
    assert [r["resized"] for r in rows] == [False, True, False, True, False]


def test_maps_are_written_for_anomalous_images_only(detector: Detector):
    objects = {f"in/{i}.png": _png(SIZE, SIZE, 20 + i) for i in range(4)}
    columns, _ = decode_batch(list(objects), list(objects.values()), SIZE)
    scores = detector.score(torch.from_numpy(columns["image"])).tolist()
    threshold = float(np.median(scores))
    written: dict[str, bytes] = {}

    def write(name: str, png: bytes) -> str:
        written[name] = png
        return f"out/maps/{name}"

    rows = score_batch(detector, columns, MODEL, run="r", threshold=threshold, write_map=write).to_pylist()
    anomalous = [r for r in rows if r["anomalous"]]
    assert anomalous and len(written) == len(anomalous) < len(rows)
    for row in rows:
        assert (row["map_path"] is not None) == row["anomalous"]
    png = Image.open(io.BytesIO(next(iter(written.values()))))
    assert png.format == "PNG" and png.width > SIZE


def test_the_summary_counts_and_keeps_the_top_rows_in_bounded_memory():
    summary = ScoreSummary(top_k=3, sample_size=100)
    for start in range(0, 1000, 250):
        scores = [float(s) for s in range(start, start + 250)]
        table = pa.table(
            {
                "path": [f"p{int(s)}" for s in scores],
                "score": [None if s % 100 == 0 else s for s in scores],
                "verdict": ["error" if s % 100 == 0 else "anomalous" if s >= 900 else "normal" for s in scores],
                "resized": [s < 10 for s in scores],
            }
        )
        summary.add(table)
    metrics = summary.metrics()
    assert metrics["images_scored"] == 1000 and metrics["errors"] == 10 and metrics["resized"] == 10
    assert metrics["anomalous"] == 99 and metrics["anomaly_rate"] == pytest.approx(99 / 990)
    assert summary.highest() == [(999.0, "p999"), (998.0, "p998"), (997.0, "p997")]
    assert len(summary.sample) == 100
