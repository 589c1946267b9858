"""Live per-run status for the driver log: a small Ray actor that workers update and the driver prints.

Lines are plain text (no terminal control codes), so they read well in ``ray job logs``.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import ray


@dataclass
class RunStatus:
    state: str = "queued"  # queued, training, evaluating, logging, done, skipped, failed
    step: int = 0
    steps: int = 0
    loss: float | None = None
    detail: str = ""
    updated: float = field(default_factory=time.time)

    def line(self, name: str) -> str:
        if self.state == "training":
            loss = f" loss {self.loss:.3f}" if self.loss is not None else ""
            return f"{name}: training step {self.step}/{self.steps}{loss}"
        return f"{name}: {self.state}" + (f" {self.detail}" if self.detail else "")


def phase_durations(changes: list[tuple[str, float]]) -> dict[str, float]:
    """``[(state, t), ...]`` -> seconds per state, from each change to the next (the last state is open)."""
    out: dict[str, float] = {}
    for (state, start), (_, end) in itertools.pairwise(changes):
        out[state] = out.get(state, 0.0) + end - start
    return out


@ray.remote(num_cpus=0)
class StatusBoard:
    def __init__(self) -> None:
        self.runs: dict[str, RunStatus] = {}
        self.metrics: dict[str, list[dict[str, float]]] = {}
        # (state, wall time) at each change of state, per run: where a run's time went.
        self.changes: dict[str, list[tuple[str, float]]] = {}

    def update(self, name: str, state: str, **fields) -> None:
        status = self.runs.setdefault(name, RunStatus())
        now = time.time()
        changes = self.changes.setdefault(name, [])
        if not changes or changes[-1][0] != state:
            changes.append((state, now))
        status.state = state
        for key, value in fields.items():
            setattr(status, key, value)
        status.updated = now

    def snapshot(self) -> dict[str, RunStatus]:
        return dict(self.runs)

    def phase_seconds(self) -> dict[str, dict[str, float]]:
        """Seconds each run spent in each state it left (queued, training, evaluating, logging)."""
        return {name: phase_durations(changes) for name, changes in self.changes.items()}

    def add_metrics(self, name: str, record: dict[str, float]) -> None:
        """Training records from workers; the driver drains them into MLflow (one writer per store)."""
        self.metrics.setdefault(name, []).append(record)

    def drain_metrics(self) -> dict[str, list[dict[str, float]]]:
        out, self.metrics = self.metrics, {}
        return out


class StatusPrinter:
    """Prints a line whenever a run changes state, and every ``interval_s`` a summary of running ones."""

    def __init__(self, board, *, interval_s: float = 15.0) -> None:
        self.board = board
        self.interval_s = interval_s
        self.last_state: dict[str, str] = {}
        self.last_summary = 0.0

    def poll(self, *, force: bool = False) -> None:
        snapshot: dict[str, RunStatus] = ray.get(self.board.snapshot.remote())
        stamp = time.strftime("%H:%M:%S")
        for name, status in sorted(snapshot.items()):
            if self.last_state.get(name) != status.state:
                print(f"[{stamp}] {status.line(name)}", flush=True)
                self.last_state[name] = status.state
        now = time.monotonic()
        if force or now - self.last_summary >= self.interval_s:
            self.last_summary = now
            counts: dict[str, int] = {}
            for status in snapshot.values():
                counts[status.state] = counts.get(status.state, 0) + 1
            active = [s.line(n) for n, s in sorted(snapshot.items()) if s.state in ("training", "evaluating")]
            summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
            print(f"[{stamp}] status: {summary}" + "".join(f"\n    {a}" for a in active), flush=True)
