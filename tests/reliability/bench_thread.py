"""A benchmark driver in a background thread, so a test can break things while it trains."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from pipelines.full_benchmark import main
from tests.reliability.conftest import Stack

STEPS, LOG_EVERY = 30, 5


def registered_checkpoints(run_dir: Path) -> list[str]:
    """Checkpoints Ray Train has registered for a run (every one it reported, in order), from its snapshot file.

    Ray writes ``checkpoint_manager_snapshot.json`` after each registration; the report index grows by one per
    checkpoint, so the list is ``checkpoint_results`` names plus how many were registered and deleted since.
    """
    try:
        state = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return []
    names = [r["checkpoint_dir_name"] for r in state.get("checkpoint_results", [])]
    indices = state.get("checkpoint_report_indices", [])
    total = (max(indices) + 1) if indices else len(names)
    return [f"#{i}" for i in range(total - len(names))] + names


class BenchmarkThread(threading.Thread):
    """``full_benchmark.main`` in a thread (sharing the test's Ray), so the test can act while it runs."""

    def __init__(
        self,
        stack: Stack,
        benchmark_id: str,
        category: str,
        *,
        storage: str | None = None,
        extra: tuple = (),
        steps: int = STEPS,
    ) -> None:
        super().__init__(daemon=True)
        self.storage = storage or stack.work / f"storage-{benchmark_id}"
        self.out = stack.work / f"out-{benchmark_id}"
        self.run_name = f"{benchmark_id}-{category}-seed0"
        self.run_dir = Path(self.storage) / self.run_name
        config = stack.config(benchmark_id, steps=steps, log_every=LOG_EVERY, checkpoint_every=5)
        self.argv = ["--data", stack.s3_data, "--s3-endpoint", stack.endpoint, "--categories", category]
        self.argv += ["--config", str(config), "--benchmark-id", benchmark_id, "--mlflow-uri", stack.mlflow.uri]
        self.argv += ["--out", str(self.out), "--storage", str(self.storage), *extra]
        self.code: int | BaseException | None = None

    def run(self) -> None:
        try:
            self.code = main(self.argv)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.code = exc

    def records(self) -> list[dict]:
        """The run records the benchmark wrote (``results_runs.parquet``)."""
        import pyarrow.parquet as pq

        return pq.read_table(self.out / "results_runs.parquet").to_pylist()

    def checkpoints(self) -> set[str]:
        return {p.name for p in self.run_dir.glob("checkpoint_*")} if self.run_dir.is_dir() else set()

    def wait(self, condition, timeout_s: float = 300, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert self.is_alive() and time.monotonic() < deadline, f"no {what}; benchmark ended with {self.code}"
            time.sleep(0.2)

    def wait_for_registered(self, count: int, timeout_s: float = 300) -> list[str]:
        """Until Ray has registered ``count`` checkpoints of the run (a folder alone may still be uploading)."""
        self.wait(lambda: len(registered_checkpoints(self.run_dir)) >= count, timeout_s, f"{count} checkpoints")
        return registered_checkpoints(self.run_dir)
