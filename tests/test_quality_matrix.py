"""bench/quality.py end to end in a tiny configuration: every row kind runs, the JSON and Markdown
table are written, reruns merge, and a bad row name is refused before any work."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from cutpaste.anomalies.kinds import VOTING_KINDS

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_matrix(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "quality.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_matrix_runs_every_row_kind_and_merges(tmp_path):
    out = tmp_path / "quality.json"
    rows = "pixel-stats,untrained,paper-image,patch,local,auto-no-pre-jitter,short,short-untrained"
    tiny = ["--synth", "synth_disc", "--synth-size", "64", "--preset", "ci", "--steps", "3", "--size", "64"]
    cache = ["--cache", str(tmp_path / "models")]
    done = run_matrix(tmp_path, *tiny, "--rows", rows, "--set", "patch_stride=16", "--out", str(out), *cache)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())["rows"]
    assert [r["row"] for r in result] == rows.split(",")
    for r in result:
        # As many anomalies of each kind per held-out image, as many test defects of each type: against the
        # same normals, the AUROC is exactly the mean of the voting kinds' (of the types'), whatever the row.
        voting = [r[f"val_auroc_{kind}"] for kind in VOTING_KINDS]
        assert r["val_auroc"] == pytest.approx(statistics.fmean(voting)), r["row"]
        if r["row"] != "pixel-stats":
            assert r["image_auroc"] == pytest.approx(statistics.fmean(r["per_defect_auroc"].values())), r["row"]
        assert r["train_s"] >= 0 and r["score_s"] > 0
    by_row = {r["row"]: r for r in result}
    # synth_disc's defects are plain to see: a random ResNet already ranks them far above chance and above
    # colour statistics (measured: 0.906 and 1.000 against 0.646), the encoder rows on average too (0.86 over
    # nine rows at 3 steps, before the blend and adamw rows were removed).
    # The voting kinds' small blobs are subtler; still the encoder rows rank them
    # above colour statistics on average (measured 0.56 against 0.44).
    floors = (by_row["untrained"]["image_auroc"], by_row["short-untrained"]["image_auroc"])
    assert min(floors) > 0.85 and min(floors) > by_row["pixel-stats"]["image_auroc"] + 0.1, floors
    encoders = [r for r in result if r["row"] != "pixel-stats"]
    assert statistics.fmean(r["image_auroc"] for r in encoders) > 0.75
    assert statistics.fmean(r["val_auroc"] for r in encoders) > by_row["pixel-stats"]["val_auroc"] + 0.05
    assert by_row["patch"]["config"]["patch_size"] == 32 and "pixel_auroc" in by_row["patch"]
    assert by_row["local"]["config"]["image_score"] == "local" and "aupro" in by_row["local"]
    assert by_row["auto-no-pre-jitter"]["config"]["augment"]["pre_jitter"] == 0.0
    # The paper's rows and the short preset keep the whole-image colour jitter.
    assert by_row["paper-image"]["config"]["augment"]["pre_jitter"] == 0.1
    assert by_row["short"]["config"]["augment"]["pre_jitter"] == 0.1
    assert by_row["short"]["config"]["preset"] == "short" and by_row["short"]["config"]["steps"] == 3
    chosen = by_row["short"]["auto_choice"]  # image_score=auto chose on the training images, and says so
    assert by_row["short"]["auto_selection_auroc"][chosen] == max(by_row["short"]["auto_selection_auroc"].values())
    table = out.with_suffix(".md").read_text()
    assert "| paper-image |" in table and "val AUROC" in table and f"auto chose {chosen}" in table
    assert not list(tmp_path.glob("cutpaste-quality-*")), "generated data is removed"

    again = run_matrix(tmp_path, *tiny, "--rows", "pixel-stats", "--seed", "1", "--out", str(out))
    assert again.returncode == 0, again.stderr[-2000:]
    merged = json.loads(out.read_text())["rows"]
    assert len(merged) == len(result), "a rerun replaces its own entries and keeps the others"

    # A scoring row added later reuses the cached model of the same training instead of retraining.
    knn = run_matrix(tmp_path, *tiny, "--rows", "short-knn", "--out", str(out), *cache)
    assert knn.returncode == 0, knn.stderr[-2000:]
    by_row = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    assert by_row["short-knn"]["shared_training"] and by_row["short-knn"]["train_s"] == by_row["short"]["train_s"]
    assert by_row["short-knn"]["config"]["feature_density"] == "knn"
    assert by_row["short-knn"]["config"]["feature_stages"] == 1
    assert "(knn, layer3 grid 8)" in out.with_suffix(".md").read_text(), "the config column names the stage"


def test_an_unknown_row_is_refused(tmp_path):
    done = run_matrix(tmp_path, "--synth", "synth_disc", "--rows", "paper-image,magic")
    assert done.returncode == 2 and "magic" in done.stderr


def test_a_cache_that_is_a_file_is_refused_before_any_work(tmp_path):
    cache = tmp_path / "models.pt"
    cache.write_text("not a folder")
    out = tmp_path / "quality.json"
    done = run_matrix(tmp_path, "--synth", "synth_disc", "--rows", "short", "--cache", str(cache), "--out", str(out))
    assert done.returncode == 2 and "--cache" in done.stderr and "is a file" in done.stderr
    assert cache.read_text() == "not a folder" and not out.exists()
