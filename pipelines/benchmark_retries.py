"""The driver's retries: a run lost to an infrastructure fault is queued again within ``--max-failures``, and
an idempotent MLflow step is tried again once the tracking server answers.

Ray Train's own ``FailureConfig`` is not used for runs (see ``benchmark_queue.execute_run``): it retries
any worker error, bad data included, and never a lost controller. MLflow's client retries single HTTP
requests (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, a few seconds of backoff); the policies here cover a server
that is down for minutes and a step made of many requests. Both are ``tenacity`` policies, one per concern.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_fixed,
    wait_none,
)

from cutpaste.evaluation.report import RunRecord
from pipelines import faults, placement, tracking
from pipelines.benchmark_config import BenchmarkConfig, Session
from pipelines.train_run import RunSpec

T = TypeVar("T")
HEALTH_POLL_S = 1.0  # between health checks of a tracking server that is away


def tracking_policy(bench: BenchmarkConfig, what: str) -> Retrying:
    """An idempotent MLflow step: tried ``--max-failures`` more times, each after MLflow answers again, when it
    failed for an infrastructure fault; any other error, or the last one, is raised as it is."""

    def wait_for_mlflow(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        print(f"{what} failed ({faults.describe(exc)}); waiting for MLflow to try again", flush=True)
        wait_for_tracking(bench)

    return Retrying(
        stop=stop_after_attempt(bench.max_failures + 1),
        retry=retry_if_exception(faults.is_infrastructure_fault),
        wait=wait_none(),
        before_sleep=wait_for_mlflow,
        reraise=True,
    )


def with_tracking_retries(bench: BenchmarkConfig, what: str, action: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``action(*args, **kwargs)`` under :func:`tracking_policy`."""
    return tracking_policy(bench, what)(action, *args, **kwargs)


def health_policy(bench: BenchmarkConfig) -> Retrying:
    """The tracking server's health check, every second until it answers or ``tracking_timeout_s`` passed."""
    return Retrying(
        stop=stop_after_delay(bench.tracking_timeout_s),
        wait=wait_fixed(HEALTH_POLL_S),
        retry=retry_if_exception_type(tracking.TrackingError),
        retry_error_callback=lambda _: False,
    )


def wait_for_tracking(bench: BenchmarkConfig) -> bool:
    """Until the tracking server answers its health check, at most ``tracking_timeout_s``; True if it does."""

    def healthy() -> bool:
        tracking.check_reachable(bench.mlflow_uri, timeout_s=5.0)
        return True

    return health_policy(bench)(healthy)


def requeue(session: Session, spec: RunSpec, run_id: str, cause: str) -> bool:
    """Queues the run again when its failure budget allows; it resumes from its last checkpoint."""
    causes = session.faults.setdefault(spec.name, [])
    if len(causes) >= session.bench.max_failures:
        return False
    causes.append(cause)
    placement.release(session.groups.pop(spec.name, None))
    attempt = f"attempt {len(causes) + 1} of {session.bench.max_failures + 1}"
    session.board.update(spec.name, "retrying", detail=f"{attempt} after {cause[:200]}")
    print(f"{spec.name}: retrying ({attempt}) after {cause}", flush=True)
    session.buffers[spec.name] = tracking.MetricBuffer(session.bench.mlflow_uri, run_id)
    return True


def retries(session: Session, spec: RunSpec) -> dict[str, Any]:
    """How often the run was retried and why, as its record carries it."""
    causes = session.faults.get(spec.name, [])
    return {"retries": len(causes), "faults": "; ".join(causes)}


def retry_tags(retried: dict[str, Any]) -> dict[str, Any]:
    return {"cutpaste.retries": retried["retries"], "cutpaste.faults": retried["faults"][:5000]}


def failed(session: Session, spec: RunSpec, run_id: str, reason: str) -> dict[str, Any]:
    """A failed run's record; its MLflow run is marked failed with the reason (best effort: MLflow may be the
    reason)."""
    session.board.update(spec.name, "failed", detail=reason)
    placement.release(session.groups.pop(spec.name, None))
    retried = retries(session, spec)
    try:
        tracking.set_tags(session.client, run_id, {"cutpaste.error": reason[:5000], **retry_tags(retried)})
        tracking.finish_run(session.client, run_id, failed=True)
    except Exception:
        traceback.print_exc()
    record = RunRecord(spec.category, spec.seed, "failed", error=reason, run_name=spec.name)
    return {**asdict(record), **retried}
