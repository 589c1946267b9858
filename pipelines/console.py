"""A readable driver console: Ray's known-harmless warnings filtered out in every worker process of the job
(the driver prints what workers log), and a status table of the runs that redraws in place on a terminal
(``rich``'s ``Live`` display of a ``Table``; plain text lines elsewhere).

Filtered, each for a stated reason (docs/benchmark.md lists them):

- ``placement_group_cleaner``: "Failed to query Ray Train Controller actor state". Ray Train's cleaner
  polls the State API, which a Ray started without its dashboard does not serve; it says itself that it
  keeps monitoring, and it repeats every few seconds for every run.
- Ray Train's "Checkpoint successfully created at" and "Reporting training result" info lines: routine,
  several per run; the status table shows each run's progress in one line.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from rich import box
from rich.console import Console, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

SETUP_HOOK = "pipelines.console.quiet_known_warnings"
KNOWN_HARMLESS: dict[str, tuple[str, ...]] = {
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": (
        "Failed to query Ray Train Controller actor state",
    ),
    # Routine lines, one per report of every run: the status table says the same in one line per run.
    "ray.train.v2._internal.execution.storage": ("Checkpoint successfully created at",),
    "ray.train.v2._internal.execution.context": ("Reporting training result",),
}
# Ray Train gives up on a worker group that has not started within 60 s and retries with a traceback; the
# benchmark queues one run more than the cluster holds (its start-up overlaps the others' training), and
# that run legitimately waits for a free slot, so it gets hours, not a minute (unless the user set it).
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
START_TIMEOUT_S = "21600"


def job_runtime_env() -> dict:
    """What every worker process of the benchmark's or the sweep's job gets."""
    return {
        "worker_process_setup_hook": SETUP_HOOK,
        "env_vars": {START_TIMEOUT_ENV: os.environ.get(START_TIMEOUT_ENV, START_TIMEOUT_S)},
    }


def quiet_driver() -> None:
    """The driver's own output: MLflow's artifact progress bars only on a terminal."""
    if not sys.stderr.isatty():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class _DropKnown(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def quiet_known_warnings() -> None:
    """Ray's ``worker_process_setup_hook``: runs in every worker process of the job before any task."""
    for name, fragments in KNOWN_HARMLESS.items():
        for logger in map(logging.getLogger, _logger_names(name)):
            if not any(isinstance(f, _DropKnown) for f in logger.filters):
                logger.addFilter(_DropKnown(fragments))


def _logger_names(module: str) -> list[str]:
    """A module's logger by name, and by file path: some of Ray's modules name theirs ``__file__``."""
    import ray

    relative = module.split(".")[1:]
    return [module, str(Path(ray.__file__).parent.joinpath(*relative).with_suffix(".py"))]


def _clock(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    seconds = round(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


STATUS_COLUMNS = ("run", "state", "step", "loss", "img/s", "ETA")


def status_rows(snapshot: Mapping[str, Any], now: float) -> list[tuple[str, ...]]:
    """One row of cells per run: state, step, loss, img/s and the ETA of its training (from its own step
    rate), the same cells for the plain table and the live one."""
    rows = []
    for name, s in sorted(snapshot.items()):
        step = f"{s.step}/{s.steps}" if s.steps else "-"
        loss = f"{s.loss:.3f}" if s.loss is not None else "-"
        img_s = f"{s.img_s:.1f}" if getattr(s, "img_s", None) else "-"
        eta = None
        since, first = getattr(s, "training_since", None), getattr(s, "first_step", None)
        if s.state == "training" and since and first is not None and s.step > first and now > since:
            eta = (s.steps - s.step) * (now - since) / (s.step - first)
        state = s.state if len(s.state) <= 10 else s.state[:9] + "…"
        rows.append((name, state, step, loss, img_s, _clock(eta)))
    return rows


def status_table(snapshot: Mapping[str, Any], now: float) -> list[str]:
    """The status table as plain text lines (logs without a terminal: ``ray job logs``, CI)."""
    width = max([len("run"), *(len(n) for n in snapshot)])
    lines = [f"{'run':<{width}}  {'state':<10} {'step':>11} {'loss':>7} {'img/s':>7} {'ETA':>7}"]
    for name, state, step, loss, img_s, eta in status_rows(snapshot, now):
        lines.append(f"{name:<{width}}  {state:<10} {step:>11} {loss:>7} {img_s:>7} {eta:>7}")
    return lines


def live_status_table(snapshot: Mapping[str, Any], now: float, *, title: str = "") -> Table:
    """The status table for a terminal, as ``rich`` draws it."""
    table = Table(title=Text(title) if title else None, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in STATUS_COLUMNS:
        table.add_column(column, justify="left" if column in ("run", "state") else "right", no_wrap=True)
    for row in status_rows(snapshot, now):
        table.add_row(*row)
    return table


class TableWriter:
    """The status table redrawn in place on a terminal (a ``rich.live.Live``, which also keeps lines the
    driver prints meanwhile above the table); elsewhere (``ray job logs``, CI) it draws nothing and the
    caller prints plain lines (``live`` is False)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self.console = Console(file=self.stream, force_terminal=self.live)
        self._display: Live | None = None

    def draw(self, renderable: RenderableType) -> None:
        if self._display is None:
            self._display = Live(renderable, console=self.console, auto_refresh=False)
            self._display.start()
        self._display.update(renderable, refresh=True)

    def forget(self) -> None:
        """The drawn table stays on screen as it is; the next draw starts a new one below it."""
        if self._display is not None:
            self._display.stop()
            self._display = None
