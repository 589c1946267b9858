"""When to draw progress bars: on a terminal only. Redirected to a log file (``ray job logs``, CI, nohup),
every refresh of a bar would be another line of carriage returns in it."""

from __future__ import annotations

import sys


def show_progress(no_progress: bool = False) -> bool:
    return not no_progress and sys.stderr.isatty()
