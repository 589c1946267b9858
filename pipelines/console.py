"""A readable driver console: Ray's known-harmless warnings filtered out in every worker process of the job
(the driver prints what workers log), and a status table of the runs that redraws in place on a terminal.

Filtered, each for a stated reason (the README lists them):

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


def status_table(snapshot: Mapping[str, Any], now: float) -> list[str]:
    """One line per run: state, step, loss, img/s and the ETA of its training (from its own step rate)."""
    width = max([len("run"), *(len(n) for n in snapshot)])
    lines = [f"{'run':<{width}}  {'state':<10} {'step':>11} {'loss':>7} {'img/s':>7} {'ETA':>7}"]
    for name, s in sorted(snapshot.items()):
        step = f"{s.step}/{s.steps}" if s.steps else "-"
        loss = f"{s.loss:.3f}" if s.loss is not None else "-"
        img_s = f"{s.img_s:.1f}" if getattr(s, "img_s", None) else "-"
        eta = None
        since, first = getattr(s, "training_since", None), getattr(s, "first_step", None)
        if s.state == "training" and since and first is not None and s.step > first and now > since:
            eta = (s.steps - s.step) * (now - since) / (s.step - first)
        state = s.state if len(s.state) <= 10 else s.state[:9] + "…"
        lines.append(f"{name:<{width}}  {state:<10} {step:>11} {loss:>7} {img_s:>7} {_clock(eta):>7}")
    return lines


class TableWriter:
    """Redraws the table in place on a terminal; elsewhere (``ray job logs``, CI) prints it only when asked."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self.drawn = 0

    def draw(self, lines: list[str]) -> None:
        if self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")  # up to the table's first line, clear below
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self.drawn = len(lines)

    def forget(self) -> None:
        """Something else was printed below the table: the next draw starts a new one."""
        self.drawn = 0
