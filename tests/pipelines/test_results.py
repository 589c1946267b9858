"""What the benchmark keeps of a finished run: the threshold's false-positive rate, expected from its
calibration and realised on the test split's normal images, as child-run metrics, in the results tables and
on the run's page."""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import torch

from cutpaste.evaluation.evaluate import Evaluation
from cutpaste.evaluation.metrics import image_metrics
from cutpaste.evaluation.report import write_results
from cutpaste.scoring.gaussian import GaussianDensity
from pipelines import benchmark_results, descriptions


def _evaluation(threshold: float) -> dict:
    """Four normal images (two at or above ``threshold``) and two defective ones, as evaluation.json has it."""
    scores, labels = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0, 0, 0, 0, 1, 1]
    calibration = {"expected_fpr": 0.01, "fpr_low": 0.0, "fpr_high": 0.03}
    return Evaluation(
        metrics=image_metrics(labels, scores, ["good"] * 4 + ["crack"] * 2),
        scores=scores,
        labels=labels,
        defect_types=["good"] * 4 + ["crack"] * 2,
        paths=[f"{i}.png" for i in range(6)],
        threshold=threshold,
        calibration=calibration,
    ).to_dict()


def test_a_finished_run_carries_its_realised_false_positive_rate_beside_the_expected_one(tmp_path):
    evaluation = _evaluation(threshold=3.0)
    assert evaluation["test_fpr"] == 0.5 and evaluation["test_fpr_normals"] == 4
    calibration = {"expected_fpr": 0.01, "fpr_low": 0.0, "fpr_high": 0.03}
    bundle = {"threshold": 3.0, "meta": {"calibration": calibration}}
    density = GaussianDensity.fit(torch.randn(20, 4, generator=torch.Generator().manual_seed(0)))
    final = benchmark_results.final_metrics(evaluation, bundle, density, None)  # what the child run logs
    assert final["test_fpr"] == 0.5
    assert (final["expected_fpr"], final["expected_fpr_low"], final["expected_fpr_high"]) == (0.01, 0.0, 0.03)

    spec = SimpleNamespace(category="bottle", seed=0, name="b-bottle-seed0")
    record = benchmark_results.to_record(benchmark_results.finished_record(spec, final))
    paths = write_results([record], tmp_path)
    (run,) = pq.read_table(paths["runs"]).to_pylist()
    assert run["test_fpr"] == 0.5 and run["expected_fpr"] == 0.01
    assert pq.read_table(paths["parquet"]).to_pylist()[0]["test_fpr_mean"] == pytest.approx(0.5)
    markdown = paths["markdown"].read_text()
    assert "FPR test (expected)" in markdown and "| 50.0 (1.0) |" in markdown

    note = descriptions.child_note(category="bottle", seed=0, metrics=final, registered=None, parent_link="p")
    assert "| false-positive rate on the test split's normal images | 0.5000 |" in note
