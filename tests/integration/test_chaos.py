"""bench/chaos.py in a short configuration: one fault of each of two kinds during a one-run benchmark job."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_chaos_benchmark_survives_a_killed_controller_and_status_board(tmp_path):
    out = tmp_path / "chaos.json"
    argv = ["--kinds", "train_controller,status_board", "--faults-per-kind", "1", "--categories", "1"]
    argv += ["--seeds", "1", "--cpus", "2", "--gap", "1,3", "--timeout", "600", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "bench/chaos.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=1200
    )
    assert out.is_file(), (done.stdout + done.stderr)[-4000:]
    result = json.loads(out.read_text())
    rows = {row["kind"]: row for row in result["kinds"]}
    assert set(rows) == {"train_controller", "status_board"}
    for kind, row in rows.items():
        assert row["faults_injected"] == 1, (kind, row)
        assert row["job"] == "SUCCEEDED" and row["runs_finished"] == row["runs"] == 1, (kind, row)
        assert row["metrics_equal"] == 1 and row["leaked_placement_groups"] == 0, (kind, row)
    assert rows["train_controller"]["retries"] >= 1  # the benchmark ran the run again
    assert done.returncode == 0, done.stdout[-3000:]
    assert "| train_controller | 1 | 1/1 |" in out.with_suffix(".md").read_text()
