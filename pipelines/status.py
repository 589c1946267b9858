"""Live per-run status for the driver log: a small Ray actor that workers update and the driver prints.

On a terminal the driver redraws one compact table in place (state, step, loss, img/s, ETA); elsewhere
(``ray job logs``, CI) it prints a line per change of state and the table every ``interval_s``, as plain
text without control codes.
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import TextIO

import ray
from rich.console import Group
from rich.text import Text

from pipelines.console import TableWriter, live_status_table, status_table

EVENTS_SHOWN = 6  # latest changes of state shown under the live table


@dataclass
class RunStatus:
    state: str = "queued"  # queued, training, evaluating, logging, done, skipped, failed
    step: int = 0
    steps: int = 0
    loss: float | None = None
    img_s: float | None = None
    detail: str = ""
    updated: float = field(default_factory=time.time)
    # When training (re)started and from which step: the ETA comes from the run's own step rate.
    training_since: float | None = None
    first_step: int | None = None

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


# A killed board comes back (empty: the driver announces its runs again, see Announcer), and calls made
# while it restarts wait for it instead of failing the driver or a worker.
@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class StatusBoard:
    def __init__(self) -> None:
        self.incarnation = uuid.uuid4().hex  # changes when Ray restarts the actor
        self.groups: dict[str, str] = {}  # run -> its worker group's placement group (hex id)
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
        if state == "training" and status.state != "training":
            status.training_since, status.first_step = now, int(fields.get("step", status.step))
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

    def get_incarnation(self) -> str:
        return self.incarnation

    def set_placement_group(self, name: str, group_hex: str) -> None:
        self.groups[name] = group_hex

    def placement_groups(self) -> dict[str, str]:
        return dict(self.groups)


class Announcer:
    """The driver's side of the board: what it announced per run, sent again when the board was restarted
    (an actor killed and brought back by Ray starts empty)."""

    def __init__(self, board) -> None:
        self.handle = board
        self.announced: dict[str, tuple[str, dict]] = {}
        self.incarnation: str | None = None

    def update(self, name: str, state: str, **fields) -> None:
        self.announced[name] = (state, fields)
        self.handle.update.remote(name, state, **fields)

    def check(self) -> bool:
        """True when the board came back empty since the last check (its runs were announced again)."""
        current = ray.get(self.handle.get_incarnation.remote())
        restarted = self.incarnation is not None and current != self.incarnation
        self.incarnation = current
        if restarted:
            for name, (state, fields) in self.announced.items():
                self.handle.update.remote(name, state, **fields)
        return restarted


class StatusPrinter:
    """A line whenever a run changes state and the status table every ``interval_s``; on a terminal, the
    table redrawn in place with the latest changes under it."""

    def __init__(self, board, *, interval_s: float = 15.0, stream: TextIO | None = None) -> None:
        self.board = board
        self.interval_s = interval_s
        self.last_state: dict[str, str] = {}
        self.last_summary = 0.0
        self.writer = TableWriter(stream)
        self.events: list[str] = []

    def close(self) -> None:
        """Ends the live display (a no-op without a terminal), e.g. when the driver stops on an error."""
        self.writer.forget()

    def poll(self, *, force: bool = False) -> None:
        snapshot: dict[str, RunStatus] = ray.get(self.board.snapshot.remote())
        stamp = time.strftime("%H:%M:%S")
        changes = []
        for name, status in sorted(snapshot.items()):
            if self.last_state.get(name) != status.state:
                changes.append(f"[{stamp}] {status.line(name)}")
                self.last_state[name] = status.state
        if self.writer.live:
            self.events = (self.events + changes)[-EVENTS_SHOWN:]
            table = live_status_table(snapshot, time.time(), title=f"[{stamp}] runs")
            self.writer.draw(Group(table, *(Text(event) for event in self.events)))
            if force:
                self.writer.forget()  # the final table stays on screen
            return
        table = status_table(snapshot, time.time())
        for line in changes:
            self.writer.stream.write(line + "\n")
        now = time.monotonic()
        if force or now - self.last_summary >= self.interval_s:
            self.last_summary = now
            self.writer.stream.write("\n".join([f"[{stamp}] status:", *("    " + t for t in table)]) + "\n")
        self.writer.stream.flush()
