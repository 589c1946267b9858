"""bench/chaos.py in a short configuration: one fault of each of two kinds during a one-run benchmark job
(tests/reliability/test_fault_phases.py kills at fixed points; this kills at random moments)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_chaos_benchmark_survives_a_killed_status_board_and_mlflow_server(tmp_path):
    out = tmp_path / "chaos.json"
    argv = ["--kinds", "status_board,mlflow_server", "--faults-per-kind", "1", "--categories", "1"]
    argv += ["--seeds", "1", "--cpus", "2", "--gap", "1,3", "--timeout", "600", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "bench/chaos.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=1200
    )
    assert out.is_file(), (done.stdout + done.stderr)[-4000:]
    result = json.loads(out.read_text())
    rows = {row["kind"]: row for row in result["kinds"]}
    assert set(rows) == {"status_board", "mlflow_server"}
    for kind, row in rows.items():
        assert row["faults_injected"] == 1, (kind, row)
        assert row["job"] == "SUCCEEDED" and row["runs_finished"] == row["runs"] == 1, (kind, row)
        assert row["metrics_equal"] == 1 and row["leaked_placement_groups"] == 0, (kind, row)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "| mlflow_server | 1 | 1/1 |" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--kinds", "training_worker,gpu_driver"], "--kinds: unknown ['gpu_driver']"),
        (["--gap", "15,3"], "--gap: expected MIN,MAX seconds"),
    ],
)
def test_bad_flags_are_one_line_errors_before_anything_starts(tmp_path, flags, message):
    out = tmp_path / "chaos.json"
    done = subprocess.run(
        [sys.executable, "bench/chaos.py", *flags, "--out", str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not out.exists() and not list(tmp_path.iterdir())
