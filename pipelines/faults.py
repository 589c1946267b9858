"""Which failures a run is retried for, and a deterministic way to cause them.

Ray Train's ``FailureConfig`` retries any worker error, bad data included, and never a lost train
controller, nor a worker lost while its group's training function is launched (a ``ControllerError``).
So the benchmark runs Ray Train with ``max_failures=0`` and retries itself, under the same run name: the
new attempt resumes from the run's last checkpoint (or, when the run had finished, reports its final bundle
again and trains nothing). Only infrastructure faults are retried: a process, node or connection that went
away, at any phase (start-up, training, density, evaluation, the final upload, the driver's logging). Bad
data, a bad config or a bug fail the same way every time, so a retry would only spend the failure budget.

``CUTPASTE_FAULT`` (``point`` or ``point@run-name``, plus ``:path`` of a marker file; several separated by
commas) makes the process that reaches that point SIGKILL itself once: the marker is created first, so the
retry passes the point. The fault tests use it to kill at exact phases; the chaos benchmark
(``bench/chaos.py``) kills from outside.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

from cutpaste.errors import CutPasteError

FAULT_ENV = "CUTPASTE_FAULT"
# Where a run can be killed deterministically (in the worker, except ``logging`` in the driver).
FAULT_POINTS = ("startup", "training", "final_checkpoint", "density", "evaluation", "logging")

# Errors that say the code or its inputs are wrong: the same on every attempt, never retried.
_DETERMINISTIC = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    NameError,
    ImportError,
    SyntaxError,
    AssertionError,
    NotImplementedError,
    ArithmeticError,
)
# Library errors that name a lost connection rather than bad input (S3 endpoint, MLflow server).
_INFRA_LIBRARY_ERRORS = ("TransferError", "TrackingError")
# Ray error types (by name, so this module imports without Ray's internals) that mean a lost process or node.
_RAY_PROCESS_ERRORS = {
    "RayActorError",
    "ActorDiedError",
    "ActorUnavailableError",
    "ActorUnschedulableError",
    "WorkerCrashedError",
    "NodeDiedError",
    "ObjectLostError",
    "OwnerDiedError",
    "ObjectFetchTimedOutError",
    "ObjectReconstructionFailedError",
    "RaySystemError",
    "GetTimeoutError",
    "OutOfMemoryError",
    "LocalRayletDiedError",
    "WorkerHealthCheckFailedError",
    "WorkerHealthCheckTimeoutError",
    "WorkerGroupStartupFailedError",
    "WorkerGroupStartupTimeoutError",
    "CollectiveTimeoutError",
    "BroadcastCollectiveTimeoutError",
    "PreemptionError",
}
# A connection that went away, as MLflow's and botocore's wrappers word it.
_CONNECTION_WORDS = (
    "connection refused",
    "connection reset",
    "connection aborted",
    "max retries exceeded",
    "remotedisconnected",
    "could not connect",
    "endpointconnectionerror",
    "read timed out",
    "worker process has died",
    "actor died",
    "actor is dead",
)


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything inside it: ``__cause__``, Ray's ``cause``, Ray Train's per-worker failures,
    controller failure and wrapped user exception. Not ``__context__``: an error raised while another was
    being handled is not caused by it."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(getattr(current, "worker_failures", {}).values())
        for name in ("controller_failure", "_base_exc", "cause", "__cause__"):
            inner = getattr(current, name, None)
            if isinstance(inner, BaseException):
                stack.append(inner)


def describe(exc: BaseException) -> str:
    """One line for a status line, a tag or the results table: the innermost error (Ray wraps the one a user
    can act on in a training error, a worker failure, a task error), after the wrapper's type when it says
    where the error came from (``ControllerError > ActorDiedError: ...``)."""
    inner = _innermost(exc)
    text = [line.strip() for line in str(inner).strip().splitlines() if line.strip()]
    where = f"{type(exc).__name__} > " if inner is not exc and type(exc).__name__.endswith("Error") else ""
    return f"{where}{type(inner).__name__}: {text[-1] if text else ''}"[:500]


def _innermost(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while True:
        failures = list(getattr(exc, "worker_failures", {}).values())
        inner = (
            exc.__cause__
            or getattr(exc, "controller_failure", None)
            or getattr(exc, "_base_exc", None)
            or (failures[0] if failures else None)
        )
        if not isinstance(inner, BaseException) or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def is_infrastructure_fault(exc: BaseException) -> bool:
    """True when ``exc`` comes from a lost process, node or connection, not from the run's code, data or config.

    A deterministic error anywhere inside (a worker's ``DataError``, a ``ValueError``) wins: a run whose
    worker failed on bad data and whose group was then torn down is not an infrastructure fault.
    """
    chain = list(causes(exc))
    for error in chain:
        if isinstance(error, CutPasteError) and type(error).__name__ not in _INFRA_LIBRARY_ERRORS:
            return False
        if isinstance(error, _DETERMINISTIC) and not _names_lost_connection(error):
            return False
    for error in chain:
        if type(error).__name__ in _RAY_PROCESS_ERRORS or type(error).__name__ in _INFRA_LIBRARY_ERRORS:
            return True
        if isinstance(error, ConnectionError | TimeoutError | OSError) or _names_lost_connection(error):
            return True
    return False


def _names_lost_connection(error: BaseException) -> bool:
    text = f"{type(error).__name__}: {error}".lower()
    return any(word in text for word in _CONNECTION_WORDS)


def check_fault_setting(value: str | None) -> None:
    """A one-line error for a ``CUTPASTE_FAULT`` value this module would not understand."""
    if not value:
        return
    for item in value.split(","):
        point, sep, marker = item.partition(":")
        if point.partition("@")[0] not in FAULT_POINTS or not sep or not marker:
            raise CutPasteError(
                f"{FAULT_ENV}={value!r}: expected POINT[@RUN]:MARKER_PATH (comma-separated) with POINT one of "
                f"{', '.join(FAULT_POINTS)}"
            )


def inject(point: str, run: str, setting: str | None = None) -> None:
    """SIGKILLs this process at ``point`` of ``run`` when ``setting`` (default: ``$CUTPASTE_FAULT``) asks for it
    and its marker file does not exist yet; creates the marker first, so the next attempt goes through."""
    setting = os.environ.get(FAULT_ENV) if setting is None else setting
    for item in (setting or "").split(","):
        target, _, marker = item.partition(":")
        wanted, _, wanted_run = target.partition("@")
        if wanted != point or (wanted_run and wanted_run != run) or not marker:
            continue
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.write(fd, f"{point} {run} pid {os.getpid()}\n".encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
